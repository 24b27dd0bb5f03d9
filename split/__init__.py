"""veriswarm.split."""
