"""paraplan planner: the three nouns, cost model, search and CLI (torch-free)."""
