"""A real anvil devnet for the chain tests: one per test session, a fresh EVM snapshot per test.

Import the fixtures into a test module (``from tests.deploy.devnet_fixtures import chain, devnet``). The
anvil process is shared by every module that uses them (started once, stopped at the end of the session).
"""

from __future__ import annotations

import atexit
from collections.abc import Iterator
from pathlib import Path

import pytest

from veriswarm.deploy.devnet import free_port, start_devnet, stop_devnet
from veriswarm.incentives.chain import Chain, Deployment

_SHARED: list[tuple[Deployment, Path]] = []


def shared_devnet(base: Path) -> tuple[Deployment, Path]:
    """Start the session's devnet once (state under ``base``); it is stopped when the process exits."""
    if not _SHARED:
        state = base / "devnet"
        _SHARED.append((start_devnet(state, port=free_port(), die_with_parent=True), state))
        atexit.register(stop_devnet, state)
    return _SHARED[0]


@pytest.fixture(scope="session")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return shared_devnet(tmp_path_factory.getbasetemp())[0]


@pytest.fixture(scope="session")
def deployment_file(devnet: Deployment) -> Path:
    """The session devnet's deployment file (what nodes and the CLI are given)."""
    from veriswarm.deploy.devnet import deployment_path

    return deployment_path(_SHARED[0][1])


@pytest.fixture
def chain(devnet: Deployment) -> Iterator[Chain]:
    """A client on the devnet; every change a test makes is undone afterwards (evm_snapshot / evm_revert)."""
    c = devnet.chain()
    snap = c.snapshot()
    yield c
    c.revert(snap)
