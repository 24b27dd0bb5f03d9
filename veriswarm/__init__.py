"""veriswarm: secure, verifiable, decentralized LLM inference.

The core package holds what every process agrees on: wire types, tensor frames, receipts,
manifests, node keys and the exception root. It imports nothing else of the project.
"""

__version__ = "0.1.0"
