"""`python -m bench.compiled`: single-row predict latency of each shipped family, its Pipeline beside its ONNX
compilation (pipeline.model.compiled), fitted with the shipped parameters on the demo study's training rows.

Median of 200 calls each (time.perf_counter), one thread, after one warm-up call; the parity on the holdout
is printed too. Numbers for the issue, not a gate: nothing here fails.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

from pipeline.contract.config import load_config
from pipeline.contract.settings import PROJECT_ROOT
from pipeline.data import demo, ingest
from pipeline.model import compiled, train
from pipeline.model.features import model_inputs

CALLS = 200


def median_seconds(call: Callable[[], object], calls: int = CALLS) -> float:
    """The median wall time of `calls` calls, after one warm-up call."""
    call()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    config = load_config(PROJECT_ROOT / "pipeline.yaml")
    contract, policy = config.dataset, config.training
    records = demo.demo_records()
    records["label_recorded_at"] = records["recorded_at"]
    training, holdout = train.split_holdout(ingest.cast_to_contract(records, contract), contract,
                                            policy.holdout_fraction)
    one = holdout.iloc[[0]]
    print(f"load average {os.getloadavg()[0]:.2f}; {CALLS} single-row calls each, median")
    print(f"{'family':<24}{'pipeline ms':>12}{'onnx ms':>10}{'speed-up':>10}  method  max rel diff")
    for family in policy.families:
        model = train.fit_family(training, contract, policy, family)
        result = compiled.compile_model(model, contract, holdout)
        pipeline_s = median_seconds(lambda m=model: m.predict(model_inputs(one, contract)))
        compiled_s = median_seconds(lambda r=result: r.predict(one))
        parity = result.parity.max_relative_difference if result.parity else float("nan")
        print(f"{family:<24}{pipeline_s * 1e3:>12.2f}{compiled_s * 1e3:>10.3f}{pipeline_s / compiled_s:>9.0f}x"
              f"  {result.method:<7} {parity:.1e}")


if __name__ == "__main__":
    main()
