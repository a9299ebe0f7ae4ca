"""Commands of a deployed run: create it, honour deletion requests with their audit, read the ledger, serve."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from e2urec.cli.common import (
    POSITIVE,
    friendly,
    log_line,
    method_options,
    number,
    out_console,
    parse_ids,
    parse_options,
    print_counts,
)
from e2urec.errors import E2URecError
from e2urec.io import guard_output, read_text


@friendly
def init(
    run: Annotated[Path, typer.Option(help="run folder to create (versions, ledger, current)")],
    data: Annotated[Path, typer.Option(help="prepared data folder the model was trained on")],
    model: Annotated[Path, typer.Option(help="the Original (`e2urec train --role original`)")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="key=value: an E2URec option for requests "
                                                          "(`e2urec methods e2urec` lists them) or an audit setting "
                                                          "(`e2urec methods --audit` lists them)")] = None,
    key_file: Annotated[Path | None, typer.Option(
        help="where to create the ledger key (a new 0600 file outside every e2urec folder; default: "
             "E2UREC_CACHE/keys/<run id>.key)")
    ] = None,
    overwrite: Annotated[bool, typer.Option(
        help="replace an existing --run whose ledger holds no request (a run's deletions are permanent: retire one "
             "by hand, see docs/security.md)")] = False,
) -> None:
    """Deploy a model and its data as a run that takes deletion requests (`forget`, `serve`)."""
    from e2urec.ops.audit import AuditConfig, parse_settings
    from e2urec.ops.keys import check_key_file, check_replaceable
    from e2urec.ops.run import init_run
    from e2urec.unlearning.base import REGISTRY

    pairs = [(pair, *pair.partition("=")) for pair in set_ or []]
    audit_keys = AuditConfig.names()
    audit = parse_settings({key.strip().replace("-", "_"): raw for pair, key, sep, raw in pairs
                            if sep and key.strip().replace("-", "_") in audit_keys})
    rest = [pair for pair, key, _, _ in pairs if key.strip().replace("-", "_") not in audit_keys]
    options = method_options("e2urec", parse_options(rest, REGISTRY["e2urec"].Config), "init --set")
    guard_output(run, "run", [data, model], overwrite, option="--run")
    check_replaceable(run)  # a run that honoured requests is never replaced: its users would come back
    if key_file is not None:
        check_key_file(key_file, run, (data, model))
    init_run(run, data, model, options, overwrite=overwrite, key_file=key_file, audit=audit)
    out_console.print(f"run ready → {run} (current = v0000); keep its ledger key file safe and private")


def audit_line(audit: dict | None) -> str:
    """A request's audit in a few words: verdict, MIA AUC before → after against its threshold, the forgetting
    effect (loss rise beyond the non-members'), the valid-AUC drift from the last exact model, attempts."""
    if not audit:
        return ""
    before, after = (audit.get(side, {}).get("mia_auc") for side in ("before", "after"))
    figures = (f" AUC {before:.3f}→{after:.3f}" if before is not None and after is not None else "")
    limit = f" ≤{audit['threshold']:.3f}" if audit.get("threshold") is not None else ""
    effect = (audit.get("forgetting_effect") or {}).get("effect")
    rise = f" Δloss {effect:+.3f}" if effect is not None else ""
    drifted = audit.get("drift") or {}
    drift = f" drift {drifted['drop']:+.3f}≤{drifted['allowed']:.3f}" if drifted.get("drop") is not None else ""
    tries = len(audit.get("attempts", []))
    size = f" n={audit['forget_prompts']}" if "forget_prompts" in audit else ""  # left out without --exact
    return f"{audit['verdict']}{figures}{limit}{rise}{drift}{size}" + (f" ×{tries}" if tries > 1 else "")


@friendly
def forget(
    run: Annotated[Path, typer.Option(help="run folder made by `e2urec init`")],
    users: Annotated[str | None, typer.Option(help="user ids to forget entirely: 1,2,3 or @file")] = None,
    interactions: Annotated[Path | None, typer.Option(help="CSV of user_id,item_id[,timestamp] to forget")] = None,
) -> None:
    """Honour a deletion request: rebuild the data, unlearn with E2URec, audit the forgetting (escalating when it
    fails), swap in a new version, purge."""
    from e2urec.ops.forget import forget as run_forget
    from e2urec.ops.request import read_request

    if interactions is not None:
        read_text(interactions, "--interactions")
    request = read_request(parse_ids(users) if users is not None else None, interactions)
    record = run_forget(run, request, log=log_line)
    if record["noop"]:
        out_console.print(f"request {record['request_id']}: already honoured by {record['version']}; nothing to do")
        return
    metrics = record["metrics"]
    audit = metrics["audit"]
    print_counts(f"request {record['request_id']} → {record['version']} in {record['seconds']:.1f} s: "
                 f"{record['status']}",
                 {**record["row_counts"], **{f"test_{k}": round(metrics[k], 4) for k in ("auc", "acc", "logloss")
                                             if metrics.get(k) is not None},
                  "test_n": metrics.get("test_n"), "unlearn_seconds": metrics["unlearn_seconds"],
                  "audit": audit_line(audit), "audit_reason": audit["reason"]})


@friendly
def ledger(
    run: Annotated[Path, typer.Option(help="run folder made by `e2urec init`")],
    exact: Annotated[bool, typer.Option(help="exact row counts and audit figures (they can single out a user); "
                                             "needs the run's ledger key")] = False,
) -> None:
    """List a run's deletion requests: status (a request whose process died shows as failed), the version that
    honours each, ids, test AUC, the forgetting audit, time; with --exact also the rows deleted and the audit's
    sample counts, which single out a user. Reads only: nothing in the run changes."""
    from e2urec.ops.ledger import bucket, coarse
    from e2urec.ops.run import Run

    deployed = Run(run)
    if exact:
        deployed.key()  # exact counts identify a user of a public dataset: only for whoever holds the run's key
    current = deployed.current().name
    table = Table(title=f"{run}: deletion requests (serving {current})")
    columns = ("request", "kind", "ids", *(("rows",) if exact else ()), "status", "version", "test AUC", "seconds",
               "error")
    for column in columns:
        table.add_column(column, no_wrap=column != "error")
    audits, counts = [], []
    for raw in deployed.records():
        r = raw if exact else coarse(raw)
        auc = (r["metrics"] or {}).get("auc")
        ids = len(r["id_hashes"]) if exact or r["kind"] == "users" else bucket(len(r["id_hashes"]))
        rows = (str((r["row_counts"] or {}).get("events_deleted", "")),) if exact else ()
        table.add_row(r["request_id"], r["kind"], str(ids), *rows, r["status"], r["version"] or "",
                      f"{auc:.4f}" if isinstance(auc, float) else "",
                      f"{r['seconds']:.1f}" if r["seconds"] is not None else "", escape(r["error"] or ""))
        if (r["metrics"] or {}).get("audit"):
            audits.append(f"{r['request_id']}: {audit_line(r['metrics']['audit'])}")
        if exact and r["row_counts"]:
            counts.append(f"{r['request_id']}: " + ", ".join(f"{k} {v}" for k, v in r["row_counts"].items()))
    out_console.print(table)
    if audits:  # below the table: a terminal is too narrow for one more column
        out_console.print("forgetting audit (verdict, MIA AUC before→after ≤ threshold, Δloss, valid-AUC drift "
                          "from the last exact model ≤ allowed, forget prompts):")
        for line in audits:
            out_console.print(f"  {line}", soft_wrap=True)
    if counts:
        out_console.print("row counts (exact: keep them as private as the ids):")
        for line in counts:
            out_console.print(f"  {line}", soft_wrap=True)
    elif not exact:
        out_console.print("row counts and the audit's sample counts are left out: they single out a user of a "
                          "public dataset; `--exact` shows them to whoever holds the run's ledger key")


@friendly
def serve(
    run: Annotated[Path, typer.Option(help="run folder made by `e2urec init`")],
    host: Annotated[str, typer.Option(help="address to listen on (loopback by default; others need a token)")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port", callback=number(1, 65535))] = 8000,
    max_pairs: Annotated[int, typer.Option(help="most pairs (or ids) one request may carry; more → 413",
                                           callback=POSITIVE)] = 1000,
    token_file: Annotated[Path | None, typer.Option(
        help="file holding the bearer token for every endpoint but /health (else $E2UREC_API_TOKEN)")] = None,
    read_token_file: Annotated[Path | None, typer.Option(
        help="file holding a read-only token: /score and /jobs, not /forget (else $E2UREC_API_READ_TOKEN)")] = None,
    allow_host: Annotated[list[str] | None, typer.Option(
        help="a host name clients use in the Host header (repeatable); the bound address is always allowed")
    ] = None,
) -> None:
    """Serve the run over HTTP: /score, /forget (queued, honoured one at a time), /jobs/{id}, /health."""
    import logging

    import uvicorn

    from e2urec.ops.access import load_tokens
    from e2urec.ops.service import create_app

    tokens = load_tokens(token_file, read_token_file)
    if not tokens.enabled and not is_loopback(host):
        raise E2URecError(f"--host {host}: not a loopback address, and no token is set; anyone who reaches the "
                          f"port could delete users. Set --token-file (or E2UREC_API_TOKEN), or bind 127.0.0.1")
    hosts = allowed_hosts(host, allow_host or [])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    uvicorn.run(create_app(run, max_pairs=max_pairs, tokens=tokens, allowed_hosts=hosts), host=host, port=port)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def allowed_hosts(host: str, extra: list[str]) -> list[str]:
    """Names the Host header may carry (DNS-rebinding guard): the bound address, loopback names when bound to
    loopback, and each --allow-host; a wildcard bind (0.0.0.0, ::) needs the names clients use."""
    try:
        wildcard = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        wildcard = False
    if wildcard and not extra:
        raise E2URecError(f"--host {host}: listens on every address, so name the host names clients use with "
                          f"--allow-host (the Host header is checked against them)")
    names = [] if wildcard else [host]
    if is_loopback(host):
        names += ["127.0.0.1", "localhost"]
    return sorted(set(names + extra))
