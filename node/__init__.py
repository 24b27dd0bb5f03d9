"""veriswarm.node."""
