"""veriswarm.client: the SDK application developers use. Speaks the protocol only; never imports node."""

from .registry import PeerInfo, Registry, StaticRegistry
from .sampling import SamplingParams
from .sdk import AsyncClient, Client, Generation, TokenEvent

__all__ = ["AsyncClient", "Client", "Generation", "PeerInfo", "Registry", "SamplingParams", "StaticRegistry",
           "TokenEvent"]
