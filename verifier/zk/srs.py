"""KZG structured reference strings (SRS): one file per ``logrows``, cached on disk.

Every slice circuit is proven and verified against an SRS of *exactly* its own ``logrows``: ezkl can
use a larger SRS, but verification then slows down by orders of magnitude (measured: a k=17 SRS on a
k=15 circuit took verify from 0.05 s to 38 s).

Trust: :func:`ensure_srs` can *generate* a missing SRS locally with ``ezkl.gen_srs``. That SRS comes
from a single party (this machine knows the toxic waste), so proofs checked against it convince only
this machine: it is for tests, benchmarks and devnets. Production puts the files of a public ceremony
(``kzg<k>.srs``, e.g. from the perpetual-powers-of-tau transcript converted by ezkl) into the SRS
directory and turns generation off (``VERISWARM_ZK_TEST_SRS=0`` or ``generate=False``).
``ezkl.get_srs`` (which downloads) is never called.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import ezkl

from veriswarm.errors import ConfigError

log = logging.getLogger(__name__)

MIN_LOGROWS = 6
MAX_LOGROWS = 24
ENV_SRS_DIR = "VERISWARM_SRS_DIR"
ENV_TEST_SRS = "VERISWARM_ZK_TEST_SRS"


def default_srs_dir() -> Path:
    env = os.environ.get(ENV_SRS_DIR)
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "veriswarm" / "srs"


def local_srs_allowed() -> bool:
    """Whether a missing SRS may be generated locally (single-party, test-only trust)."""
    return os.environ.get(ENV_TEST_SRS, "1").strip().lower() not in ("0", "false", "no", "off")


def srs_file(srs_dir: Path, logrows: int) -> Path:
    return srs_dir / f"kzg{logrows}.srs"


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if missing), so concurrent builders wait instead of racing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def ensure_srs(logrows: int, srs_dir: Path | None = None, *, generate: bool | None = None) -> Path:
    """The SRS file for exactly ``logrows``, generating (test-only trust) and caching it if allowed."""
    if not isinstance(logrows, int) or not MIN_LOGROWS <= logrows <= MAX_LOGROWS:
        raise ConfigError(f"logrows {logrows!r} is outside {MIN_LOGROWS}..{MAX_LOGROWS}")
    srs_dir = Path(srs_dir) if srs_dir is not None else default_srs_dir()
    path = srs_file(srs_dir, logrows)
    if path.is_file():
        return path
    if generate is None:
        generate = local_srs_allowed()
    if not generate:
        raise ConfigError(f"no SRS for logrows {logrows} at {path}: put the ceremony file kzg{logrows}.srs there "
                          f"(or allow a local test-only SRS with {ENV_TEST_SRS}=1)")
    with file_lock(srs_dir / f".kzg{logrows}.lock"):
        if path.is_file():  # another process made it while we waited
            return path
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        log.warning("generating a local single-party SRS for logrows %d at %s (test-only trust)", logrows, path)
        try:
            ezkl.gen_srs(str(tmp), logrows)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


@lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def srs_sha256(path: Path) -> str:
    """sha256 of an SRS file (keys and verifying-key hashes depend on the exact SRS)."""
    st = path.stat()
    return _sha256_cached(str(path.resolve()), st.st_size, st.st_mtime_ns)
