"""Reference image sets: the HRSC crater catalogue, user image folders, and their manifests."""
