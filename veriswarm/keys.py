"""Node keys: a secp256k1 key in an eth-account (Web3 Secret Storage) keystore file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from eth_account import Account
from eth_utils import to_checksum_address

from .errors import NodeKeyError
from .receipts import address_of
from .types import NodeAddress

PASSWORD_ENV = "VERISWARM_KEY_PASSWORD"


def create_keystore(path: Path, password: str, *, overwrite: bool = False, light: bool = False) -> NodeAddress:
    """Write a new random key to ``path`` (mode 0600) and return its address.

    ``light`` lowers the scrypt work factor (n=2**14 instead of 2**18) for throwaway devnet and test
    keys, so starting a local swarm does not spend seconds per node unlocking keys. Never for real stake.
    """
    if path.exists() and not overwrite:
        raise NodeKeyError(f"key file {path} already exists (pass --force to overwrite)")
    if not password:
        raise NodeKeyError(f"an empty password is not allowed (set {PASSWORD_ENV} or answer the prompt)")
    account = Account.create()
    keystore = Account.encrypt(account.key, password, iterations=2**14 if light else None)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(keystore, fh)
    return NodeAddress(account.address)


def load_keystore(path: Path, password: str) -> bytes:
    """Decrypt a keystore file and return the raw 32-byte private key."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise NodeKeyError(f"key file {path} not found (create one with `veriswarm node keys create`)") from None
    except (OSError, ValueError) as exc:
        raise NodeKeyError(f"key file {path} is not a readable keystore: {exc}") from None
    try:
        return bytes(Account.decrypt(data, password))
    except ValueError:
        raise NodeKeyError(f"wrong password for key file {path}") from None
    except Exception as exc:  # eth-keyfile raises assorted types for malformed keystores
        raise NodeKeyError(f"key file {path} is not a valid keystore: {exc}") from None


def keystore_address(path: Path) -> NodeAddress | None:
    """The address recorded in a keystore, without decrypting it (None if absent)."""
    try:
        addr = json.loads(path.read_text()).get("address")
    except (OSError, ValueError, AttributeError):
        return None
    return NodeAddress(to_checksum_address(addr)) if isinstance(addr, str) else None


__all__ = ["PASSWORD_ENV", "address_of", "create_keystore", "keystore_address", "load_keystore"]
