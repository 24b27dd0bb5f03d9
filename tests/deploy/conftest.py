from tests.deploy.devnet_fixtures import chain, deployment_file, devnet

__all__ = ["chain", "deployment_file", "devnet"]
