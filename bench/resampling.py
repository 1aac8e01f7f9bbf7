"""`python -m bench.resampling`: the evaluation's resampling, old against new, in the same run.

Speed: the exact paired bootstrap (2,000 resamples) against the sequential Poisson bootstrap on the same
holdouts of --speed-rows rows (10^5; 2 x 10^5, the holdout of a 10^6-row snapshot; 10^6), for a clear
decision (it stops at its first look, 400 resamples) and for its worst case (a decision never settled: all
2,000 resamples, forced here by a first look at 2,000). Ratios only: the machine may be busy.
Agreement: the study of pipeline.model.resampling_study on --pairs generated pairs (300; 50 to --max-rows
rows), one line a pair, then the verdict. --speed-only or --study-only runs one half.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from pipeline.model import evaluate, resampling_study

SAMPLES, CONFIDENCE, SEED = 2000, 0.95, 42


def timed(function: object, *args: object, **kwargs: object) -> tuple[float, dict[str, object]]:
    started = time.perf_counter()
    result = function(*args, **kwargs)  # type: ignore[operator]
    return time.perf_counter() - started, result


def speed(sizes: list[int]) -> list[str]:
    """Seconds of each method at each size, and new / old."""
    lines = [f"{'holdout rows':>12} {'exact s':>8} {'new s (clear)':>14} {'resamples':>9} {'ratio':>6} "
             f"{'new s (all 2000)':>17} {'ratio':>6}"]
    print(lines[0], flush=True)
    for rows in sizes:
        pair = resampling_study.Pair("clear win", rows, seed=rows)
        data = resampling_study.pair_predictions(pair)
        old, _ = timed(evaluate.resample_gain, evaluate.EXACT, *data, SAMPLES, CONFIDENCE, SEED)
        clear, result = timed(evaluate.resample_gain, evaluate.POISSON, *data, SAMPLES, CONFIDENCE, SEED)
        worst, _ = timed(evaluate.resample_gain, evaluate.POISSON, *data, SAMPLES, CONFIDENCE, SEED, first_look=SAMPLES)
        lines.append(f"{rows:>12} {old:>8.2f} {clear:>14.2f} {result['samples']:>9} {clear / old:>6.3f} "
                     f"{worst:>17.2f} {worst / old:>6.3f}")
        print(lines[-1], flush=True)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.resampling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--max-rows", type=int, default=1_000_000)
    parser.add_argument("--speed-rows", type=int, nargs="+", default=[100_000, 200_000, 1_000_000])
    parser.add_argument("--part", type=int, nargs=2, metavar=("FIRST", "STOP"),
                        help="only pairs FIRST..STOP-1 of the study (to share it between processes)")
    parser.add_argument("--speed-only", action="store_true")
    parser.add_argument("--study-only", action="store_true")
    args = parser.parse_args(argv)
    ok = True
    if not args.study_only:
        print("speed: exact paired bootstrap vs sequential Poisson bootstrap, same rows, same run")
        speed(args.speed_rows)
    if not args.speed_only:
        print(f"\nagreement: {args.pairs} pairs, 50 to {args.max_rows} rows, at most {SAMPLES} resamples, "
              f"confidence {CONFIDENCE}")
        print(resampling_study.table([])[0])
        pairs = resampling_study.study_pairs(args.pairs, max_rows=args.max_rows)
        rows = resampling_study.run_study(pairs[slice(*args.part)] if args.part else pairs,
                                          SAMPLES, CONFIDENCE, SEED,
                                          progress=lambda row: print(resampling_study.table([row])[1], flush=True))
        ok, lines = resampling_study.verdict(rows)
        print("\n".join(lines))
        seconds = {name: sum(r[key] for r in rows) for name, key in (("exact", "exact_seconds"), ("new", "seconds"))}
        print(f"time over the pairs: exact {seconds['exact']:.1f} s, new {seconds['new']:.1f} s "
              f"(new / exact {seconds['new'] / max(seconds['exact'], 1e-9):.3f})")
        print(f"resamples drawn by the new method: median {int(np.median([r['samples'] for r in rows]))}, "
              f"{sum(r['samples'] == SAMPLES for r in rows)} pairs drew all {SAMPLES}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
