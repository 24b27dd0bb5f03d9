from tests.deploy.devnet_fixtures import chain, devnet

__all__ = ["chain", "devnet"]
