"""paraplan executor: runs a Plan with torch.distributed (see DESIGN.md). Not built yet."""
