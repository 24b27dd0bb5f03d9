"""veriswarm.incentives."""
