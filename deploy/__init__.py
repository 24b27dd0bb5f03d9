"""veriswarm.deploy."""
