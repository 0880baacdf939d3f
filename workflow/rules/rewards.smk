# Diversity rewards validated on ladders of increasing diversity (filled in by the rewards stage).
