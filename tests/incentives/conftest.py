"""Ledger backends for the tests: a SQLite file, and a real PostgreSQL server started for the run."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private PostgreSQL server (Debian's package) on a loopback port, as the `postgres` user."""
    initdb = PG_BIN / "initdb"
    if not initdb.exists():
        pytest.skip(f"PostgreSQL server binaries not found at {PG_BIN} (apt-get install postgresql)")
    # Not under pytest's basetemp: that is private to root, and the server runs as `postgres`.
    base = Path(tempfile.mkdtemp(prefix="veriswarm-pg-"))
    data = base / "data"
    runas: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        shutil.chown(base, "postgres")
        os.chmod(base, 0o700)
        runas = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run([*runas, str(initdb), "-D", str(data), "-A", "trust", "-U", "veriswarm", "--no-sync"],
                   check=True, capture_output=True)
    subprocess.run([*runas, str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-o",
                    f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                   check=True, capture_output=True)
    try:
        url = f"postgresql+psycopg://veriswarm@127.0.0.1:{port}/postgres"
        yield url
    finally:
        subprocess.run([*runas, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        time.sleep(0.1)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    url: str = request.getfixturevalue("postgres_url")
    # A fresh schema per test: drop everything the previous test made.
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public;"))
    engine.dispose()
    return url
