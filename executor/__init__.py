"""paraplan executor: runs a Plan with torch.distributed and measures it (see README)."""
