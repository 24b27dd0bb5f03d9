"""veriswarm.api: the OpenAI-compatible gateway."""
