"""The one log-line format of every stage's rule log (the stage process and its data-parallel ranks)."""

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
