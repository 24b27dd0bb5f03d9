"""veriswarm.verifier."""
