"""Patient data: who read it (quarantine, access-log), a patient's erasure (erase, erasure-report), the keys
that encrypt it at rest (rotate-keys), and sealing an old plain store (encrypt-store)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pipeline.cli.common import aligned, count_arg, operator_name, when
from pipeline.store import accesslog
from pipeline.workspace import Workspace


def cmd_quarantine(ws: Workspace, args: argparse.Namespace) -> Any:
    """The quarantined rows with their reasons and original values; the read goes to pipeline.access_log."""
    from pipeline.views import models_view

    return models_view.read_quarantine(ws.engine, ws.model, accesslog.cli_principal(), accesslog.command_line(),
                                       "quarantine", args.run_id, args.code, args.limit, channel="cli",
                                       keys=ws.keyring)


def text_quarantine(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no quarantined rows"
    table = [["run", "row", "source id", "reasons", "original values"]]
    table += [[r["run_id"], str(r["row_number"]), str(r["source_id"]),
               ", ".join(str(x.get("code")) for x in r["reasons"] or []),
               json.dumps(r["original"] or {}, default=str)] for r in rows]
    return "\n".join(aligned(table, indent=""))


def cmd_encrypt_store(ws: Workspace, args: argparse.Namespace) -> Any:
    """`encrypt-store`: every plain file and registry value of the store sealed in place (safe twice)."""
    from dataclasses import asdict

    from pipeline.registry.encrypt_store import encrypt_store

    if not ws.config.security.encrypt_at_rest:
        raise ValueError(f"security.encrypt_at_rest is false in {ws.config.path}: set it to true (the default) "
                         "first, or new files would be written plain beside the sealed ones")
    result = encrypt_store(ws.store, ws.engine)
    return {"store": str(ws.settings.artifact_dir), "key_source": ws.keyring.source, **asdict(result),
            "nothing_to_do": result.nothing_to_do}


def text_encrypt_store(result: dict[str, Any]) -> str:
    if result["nothing_to_do"]:
        return (f"{result['store']}: nothing to do ({result['already']} files sealed already; "
                f"keys from {result['key_source']})")
    lines = [f"{result['store']}: sealed {len(result['sealed'])} files ({result['already']} sealed already), "
             f"{result['team_sealed']} team-store objects, {result['quarantine_rows']} quarantine rows, "
             f"{result['validation_rows']} validation results and {result['refusal_rows']} refusals of scoring runs; "
             f"keys from {result['key_source']}"]
    lines += [f"  refused (does not hash to its name; left as it is): {r}" for r in result["refused"]]
    lines += [f"  missing (the registry names it; not in this store): {m}" for m in result["missing"]]
    return "\n".join(lines)


def cmd_access_log(ws: Workspace, args: argparse.Namespace) -> Any:
    with ws.engine.connect() as conn:
        return accesslog.recent(conn, args.limit)


def text_access_log(entries: list[dict[str, Any]]) -> str:
    if not entries:
        return "no reads of patient data recorded"
    table = [["when", "who", "channel", "what", "rows", "request"]]
    table += [[when(e["at"]), e["principal"], e["channel"], e["what"], str(e["rows"]), e["request"]] for e in entries]
    return "\n".join(aligned(table, indent=""))


def cmd_erase(ws: Workspace, args: argparse.Namespace) -> Any:
    from pipeline import erasure

    return erasure.erase(ws, args.id, args.reason, operator_name())


def text_erase(result: dict[str, Any]) -> str:
    if result["status"] == "duplicate":
        return (f"erasure request {result['request_id']}: this id was erased before (request "
                f"{result.get('first_request')}); nothing left to change")
    lines = [f"erasure request {result['request_id']}: {result['status']} in {result.get('seconds', 0):.1f} s, "
             f"{result.get('bytes_rewritten', 0)} bytes rewritten"]
    lines += [f"  snapshot {s['old_hash'][:16]}… ({s['kind']}) -> {s['new_hash'][:16]}…, {s['rows_removed']} row(s) "
              "removed, old file shredded" for s in result.get("snapshots", [])]
    lines += [f"  {p['kind']} page {p['old_hash'][:16]}… -> {p['new_hash'][:16]}…" for p in result.get("pages", [])]
    rows = {k: v for k, v in (result.get("rows_deleted") or {}).items() if v}
    scrubbed = {k: v for k, v in (result.get("json_scrubbed") or {}).items() if v}
    lines.append(f"  rows deleted: {rows or 'none'}; ids scrubbed from registry JSON: {scrubbed or 'none'}")
    if result.get("versions_trained_on_erased"):
        lines.append(f"  versions trained on the erased rows (flagged trained_on_erased): "
                     f"{', '.join(f'v{v}' for v in result['versions_trained_on_erased'])}")
    return "\n".join(lines)


def cmd_erasure_report(ws: Workspace, args: argparse.Namespace) -> Any:
    from pipeline import erasure

    return erasure.erasure_report(ws, args.id)


def text_erasure_report(report: dict[str, Any]) -> str:
    verdict = ("ERASED: every place searched, nothing found" if report["erased"] else
               f"NOT ERASED: found {report['found']} time(s)" if report["found"] else
               "not erased: no erasure request recorded for this id (nothing found either)")
    lines = [f"patient {report['source_id']}: {verdict}",
             f"tombstone: {'recorded by request ' + str(report['tombstone_request']) if report['tombstone_recorded'] else 'none'}"]
    lines += [f"request {r['request_id']}: {r['status']} {when(r['processed_at'])} by {r['requested_by']}: {r['reason']}"
              for r in report["requests"]]
    if report["versions_trained_on_erased"]:
        lines.append("versions trained on the erased rows: "
                     + ", ".join(f"v{v}" for v in report["versions_trained_on_erased"]))
    rows = [["place", "searched", "found"]] + [[p["place"], str(p["searched"]), str(p["found"])]
                                               for p in report["places"]]
    return "\n".join([*lines, *aligned(rows)])


def cmd_rotate_keys(ws: Workspace, args: argparse.Namespace) -> Any:
    from pipeline.store import keys

    return keys.rotate_keys(ws.engine, keys.open_key_manager(ws.settings, ws.config))


def text_rotate_keys(result: dict[str, Any]) -> str:
    return (f"{result['source']}: master key {result['current_key_id']} is current (was {result['previous_key_id']}); "
            f"{result['rewrapped']} data key(s) re-wrapped under it, no file rewritten; the old master key stays for "
            "backups")


def register(add: Any) -> None:
    """The parsers of the patient-data commands."""
    p = add("quarantine", cmd_quarantine, "the quarantined rows, with their reasons and original values (the read "
            "is recorded in pipeline.access_log)", text=text_quarantine,
            json_help="[{run_id, snapshot_hash, row_number, source_id, labelled, reasons, original, created_at}]")
    p.add_argument("--run-id", help="only this run's rows")
    p.add_argument("--code", help="only rows with this reason code")
    p.add_argument("--limit", type=count_arg, default=200)
    p = add("access-log", cmd_access_log, "the latest reads of patient data: who, what, when, how many rows",
            text=text_access_log, json_help="[{entry_id, at, principal, channel, what, model, rows, request}]")
    p.add_argument("--limit", type=count_arg, default=50)
    p = add("erase", cmd_erase, "erase a patient from every copy the pipeline holds (snapshots, quarantine, "
            "forecasts, reports), keeping lineage honest", text=text_erase,
            json_help="{request_id, status, snapshots, versions_trained_on_erased, rows_deleted, json_scrubbed, "
            "pages, bytes_rewritten, seconds}")
    p.add_argument("--id", required=True, help="the patient's id in the source table")
    p.add_argument("--reason", required=True, help="why: recorded with the request")
    p = add("erasure-report", cmd_erasure_report, "search every place the pipeline keeps patient data for an id",
            text=text_erasure_report, json_help="{source_id, erased, found, tombstone_recorded, requests, "
            "versions_trained_on_erased, places: [{place, searched, found}]}")
    p.add_argument("id", help="the patient's id in the source table")
    add("encrypt-store", cmd_encrypt_store, "seal every plain file of the artifact store (and the team store) in place "
        "under a data key of its own, names unchanged, and the registry's plain quarantine rows and validation "
        "results (safe twice: the second run has nothing to do)", text=text_encrypt_store,
        json_help="{store, key_source, sealed, already, refused, missing, team_sealed, quarantine_rows, "
        "validation_rows, refusal_rows, nothing_to_do}")
    add("rotate-keys", cmd_rotate_keys, "make a new master key current in the key manager (security.key_manager) "
        "and re-wrap every data key in pipeline.data_keys under it; no encrypted file is rewritten",
        text=text_rotate_keys, json_help="{source, previous_key_id, current_key_id, rewrapped}")
