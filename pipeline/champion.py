"""An operator's say over the champion: promote any registered version, and keep challengers in shadow.

`promote_version` is `python -m pipeline promote --to VERSION --reason TEXT` (and the rollback DAG's
`mode: promote`): the version's artifact is checked against its registered SHA-256 and its policy
checks are read as a rollback reads them, then it becomes champion in one transaction, recorded in
`pipeline.promotion_events` with the actor, the reason and its live evidence (its shadow forecasts).

The shadow set (`python -m pipeline shadow`) is the versions the batch also scores beside the champion
(`pipeline.serving.scoring`); its history is `pipeline.shadow_events`, append-only.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa

from pipeline.data import ingest
from pipeline.registry import records
from pipeline.serving.scoring import PREDICTIONS
from pipeline.stages import CLI, Asking, verify_artifact, vet_champion_to_be
from pipeline.workspace import Workspace

log = logging.getLogger(__name__)


def live_evidence(ws: Workspace, version: int) -> dict[str, Any]:
    """What the version did in shadow: its forecasts, the scoring runs they came from, and how many of
    them have their outcome known now (the rows a live comparison can judge)."""
    contract = ws.config.dataset
    source = ingest.source_table(contract)
    p = PREDICTIONS
    outcome_known = sa.exists().where(sa.cast(source.c[contract.id_column], sa.Text) == p.c.source_id,
                                      source.c[contract.target_column].is_not(None))
    query = sa.select(sa.func.count().label("shadow_forecasts"),
                      sa.func.count(sa.distinct(p.c.run_id)).label("shadow_runs"),
                      sa.func.count().filter(outcome_known).label("shadow_forecasts_with_outcome"),
                      sa.func.min(p.c.made_at).label("first_shadow_at"),
                      sa.func.max(p.c.made_at).label("last_shadow_at")
                      ).where(p.c.model == ws.model, p.c.version == version, p.c.source == "shadow")
    with ws.engine.connect() as conn:
        row = dict(conn.execute(query).mappings().one())
    return {"version": version, **row, **_performance(ws, version)}


def _performance(ws: Workspace, version: int) -> dict[str, Any]:
    """The version's lines in the model's latest live performance report (`pipeline.monitoring.performance`): its
    outcomes, live and holdout RMSE per source, and its pairing with the champion on the same records."""
    with ws.engine.connect() as conn:
        report = conn.execute(sa.text("""
            SELECT run_id, as_of, champion_version, versions, shadows FROM pipeline.performance_reports
             WHERE model = :model ORDER BY created_at DESC LIMIT 1
        """), {"model": ws.model}).mappings().first()
    if report is None:
        return {"performance": None}
    return {"performance": {
        "report_run_id": report["run_id"], "as_of": report["as_of"], "champion_version": report["champion_version"],
        "versions": [v for v in report["versions"] or [] if v.get("version") == version],
        "paired_with_champion": [s for s in report["shadows"] or [] if s.get("shadow_version") == version]}}


def promote_version(ws: Workspace, run_id: str, to_version: int | None, reason: str, actor: str = "operator",
                    force: bool = False, ask: Asking = CLI) -> dict[str, Any]:
    """Make a registered version champion by an operator's choice, hash-checked first, its live evidence in
    the event. A version that failed its policy checks when evaluated (or never was) needs `force`. A refusal
    says what to set in the operator's words (`ask`: the CLI's flags, or the form's fields)."""
    if not reason or not reason.strip():
        raise ValueError(f"a promotion needs a reason ({ask.reason})")
    if to_version is None:
        raise ValueError(f"a promotion needs the version to make champion: {ask.version}")
    with ws.engine.connect() as conn:
        records.get_model(conn, to_version, ws.model)  # a version of this model, or an error naming it
        current = records.current_champion(conn, ws.model)
    if current is not None and current["version"] == to_version:
        raise ValueError(f"version {to_version} is already the champion of {ws.model}")
    failed = vet_champion_to_be(ws, to_version, force, "Promote it", ask)
    evidence = live_evidence(ws, to_version)
    recorded = reason.strip() + (f" [forced past failed checks: {'; '.join(failed)}]" if failed else "")
    replaced = records.set_champion(ws.engine, ws.model, to_version, run_id, actor, f"promote: {recorded}",
                                     evidence)
    log.info("promoted: version %s is champion (replacing %s) on %d shadow forecasts (%d with their outcome): %s",
             to_version, replaced, evidence["shadow_forecasts"], evidence["shadow_forecasts_with_outcome"], recorded)
    return {"champion": to_version, "replaced": replaced, "reason": reason.strip(), "run_id": run_id,
            "forced_past": failed, "evidence": evidence}


def shadows(ws: Workspace) -> dict[str, Any]:
    """The model's champion and shadow set, with each shadow's live evidence so far."""
    with ws.engine.connect() as conn:
        current = records.current_champion(conn, ws.model)
        shadow_set = records.shadow_set(conn, ws.model)
    return {"model": ws.model, "champion": None if current is None else int(current["version"]),
            "max_shadows": ws.config.serving.max_shadows,
            "shadows": [{**s, "evidence": live_evidence(ws, int(s["version"]))} for s in shadow_set]}


def add_shadow(ws: Workspace, version: int, actor: str, reason: str) -> dict[str, Any]:
    """Put a version in shadow (at most `serving.max_shadows`), its artifact hash-checked first; the set afterwards."""
    with ws.engine.connect() as conn:
        row = records.get_model(conn, version, ws.model)
    verify_artifact(ws, row)  # a version the batch could not load is refused here, not stopped at every run
    records.add_shadow(ws.engine, ws.model, version, actor, reason.strip() or "(no reason given)",
                        ws.config.serving.max_shadows)
    log.info("version %s of %s is in shadow: the batch scores it beside the champion", version, ws.model)
    return shadows(ws)


def remove_shadow(ws: Workspace, version: int, actor: str, reason: str) -> dict[str, Any]:
    """Take a version out of shadow; the set afterwards."""
    records.remove_shadow(ws.engine, ws.model, version, actor, reason.strip() or "(no reason given)")
    log.info("version %s of %s is no longer in shadow", version, ws.model)
    return shadows(ws)


def last_kept_candidate(ws: Workspace) -> int:
    """The candidate of the latest run that was evaluated and kept the champion; an error when there is none."""
    with ws.engine.connect() as conn:
        version = records.last_kept_candidate(conn, ws.model)
    if version is None:
        raise LookupError(f"no evaluated candidate of {ws.model} was kept out (every one was promoted, or none "
                          "was evaluated); name one with --add VERSION")
    return version
