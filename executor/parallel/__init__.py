"""The parallel wrappers, one file per kind; executor/parallelize.py applies them in order."""
