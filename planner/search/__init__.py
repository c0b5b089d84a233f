"""Plan search: the space, the vectorized loop, ranking and the Pareto front."""
