"""veriswarm.cli."""
