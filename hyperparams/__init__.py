"""rl-zoo3 hyper-parameter files for ERA algorithms."""
