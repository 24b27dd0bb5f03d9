"""`veriswarm verifier start`: receive checked hops, audit them by re-execution, record verdicts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import default_model_dir, home, one_line_errors

verifier_app = typer.Typer(help="Verify nodes' work by sampled re-execution.", no_args_is_help=True)


@verifier_app.command("start")
@one_line_errors
def verifier_start(
    model_dir: Annotated[Path | None, typer.Option("--model-dir", help="the split whose shards to check")] = None,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8790,
    ledger_url: Annotated[str | None, typer.Option("--ledger-url", help="SQLAlchemy URL (default: SQLite file "
                                                      "under the working folder)")] = None,
    audit_rate: Annotated[float | None, typer.Option("--audit-rate", help="fixed per-step audit probability "
                                                        "(default: from each node's reputation)")] = None,
    idle_s: Annotated[float, typer.Option("--idle-s", help="audit a session once idle this long")] = 5.0,
    name: Annotated[str, typer.Option("--name", help="this verifier's id in the ledger")] = "verifier",
    zk_slices: Annotated[int, typer.Option("--zk-slices", help="slices per shard pre-registered for the zk proof "
                                              "demanded after every disagreement (0: no proofs)")] = 1,
    zk_deadline_s: Annotated[float, typer.Option("--zk-deadline-s", help="how long a node has to prove")] = 60.0,
    zk_sample_rate: Annotated[float, typer.Option("--zk-sample-rate", help="share of passing audits also asked for "
                                                  "a zk slice proof (every disagreement is)")] = 0.05,
    key: Annotated[Path | None, typer.Option("--key", help="this verifier's keystore: signs its dispute requests "
                                             "(nodes with zk_verifiers set answer only listed verifiers)")] = None,
) -> None:
    """Serve POST /v1/hops, GET /v1/verdicts; audits run in the background."""
    import logging

    from aiohttp import web

    from veriswarm.errors import ConfigError
    from veriswarm.incentives.ledger import Ledger
    from veriswarm.manifest import ModelDir
    from veriswarm.verifier.core import Verifier, VerifierConfig
    from veriswarm.verifier.sampling import AuditBeacon
    from veriswarm.verifier.service import make_app
    from veriswarm.verifier.zkaudit import ZkAuditor

    if audit_rate is not None and not 0.0 <= audit_rate <= 1.0:
        raise ConfigError("--audit-rate must be within [0, 1]")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    md = ModelDir.open(model_dir or default_model_dir())
    url = ledger_url or f"sqlite:///{(home() / 'ledger.db').resolve()}"
    (home()).mkdir(parents=True, exist_ok=True)
    ledger = Ledger(url)
    ledger.migrate()
    if zk_slices < 0 or zk_deadline_s <= 0 or not 0 <= zk_sample_rate <= 1:
        raise ConfigError("--zk-slices must be >= 0, --zk-deadline-s > 0 and --zk-sample-rate in [0, 1]")
    beacon = AuditBeacon()
    zk = None
    if zk_slices:  # vks are derived from the committed artifacts (cached); no SRS is downloaded
        from veriswarm.keys import load_keystore
        from veriswarm.verifier.zkaudit import http_post, signed_post

        from .main import _password

        post = signed_post(load_keystore(key, _password())) if key is not None else http_post
        zk = ZkAuditor.sampled(md, zk_slices, seed=beacon.secret, secret=beacon.secret, deadline_s=zk_deadline_s,
                               post=post)
    verifier = Verifier(md, ledger=ledger, beacon=beacon, zk=zk,
                        config=VerifierConfig(address=name, idle_s=idle_s, audit_rate=audit_rate,
                                              zk_sample_rate=zk_sample_rate))
    typer.echo(f"veriswarm verifier ready: http://{host}:{port} manifest {md.manifest.hash} "
               f"beacon commitment {verifier.beacon.commitment} ledger {url}")
    try:
        web.run_app(make_app(verifier=verifier), host=host, port=port, print=None)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
