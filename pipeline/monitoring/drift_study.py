"""How often the drift check cries wolf, and how often it sees a real shift: windows of simulated arrivals
(the generator of `simulate-arrivals`) against the demo study, clean and shifted, at several window sizes.

Run the README's study: `python -m pipeline.monitoring.drift_study` (a table in Markdown).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.contract.config import DatasetContract, DriftPolicy, load_config
from pipeline.data import demo
from pipeline.monitoring import drift

SIZES = (30, 60, 100, 400)
SCENARIOS: dict[str, dict[str, float]] = {"clean": {}, "bmi +4": {"bmi": 4.0}}


@dataclass(frozen=True)
class Rate:
    scenario: str
    rows: int
    batches: int
    flagged: int  # batches with at least one drifted feature

    @property
    def share(self) -> float:
        return self.flagged / self.batches


def flagged(reference: pd.DataFrame, window: pd.DataFrame, contract: DatasetContract, policy: DriftPolicy) -> bool:
    """Whether the drift check flags at least one feature of the window."""
    return any(r.drifted for r in drift.compare(reference, window, contract, policy))


def window_rate(reference: pd.DataFrame, contract: DatasetContract, policy: DriftPolicy, scenario: str, rows: int,
                batches: int, seed: int) -> Rate:
    """The share of `batches` seeded windows of `rows` arrivals (shifted as `scenario` says) the check flags."""
    shift = SCENARIOS[scenario] or None
    hits = sum(flagged(reference, demo.arrival_records(rows, seed + b, drift=shift), contract, policy)
               for b in range(batches))
    return Rate(scenario, rows, batches, hits)


def study(contract: DatasetContract, policy: DriftPolicy, sizes: Sequence[int] = SIZES, batches: int = 200,
          seed: int = 0) -> list[Rate]:
    """Every scenario at every window size, against the demo study as the reference."""
    reference = demo.demo_records()
    return [window_rate(reference, contract, policy, scenario, rows, batches, seed)
            for scenario in SCENARIOS for rows in sizes]


def as_markdown(rates: Sequence[Rate]) -> str:
    """One row per scenario, one column per window size: the share of windows flagged."""
    sizes = sorted({r.rows for r in rates})
    lines = ["| windows | " + " | ".join(f"{n} rows" for n in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
    for scenario in dict.fromkeys(r.scenario for r in rates):
        shares = {r.rows: r for r in rates if r.scenario == scenario}
        lines.append(f"| {scenario} | " + " | ".join(f"{shares[n].share:.3f} ({shares[n].flagged}/{shares[n].batches})"
                                                      for n in sizes) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Print the study's table for the config's drift policy."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, default=Path("pipeline.yaml"))
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    print(as_markdown(study(config.dataset, config.monitoring.drift, batches=args.batches, seed=args.seed)))


if __name__ == "__main__":
    main()
