"""The bench's REST comparison (bench/rest.py) runs end to end, as `make bench` runs it, on a few requests: our
API, the hand-written peer and the bare endpoint each answer every request, and the peer serves the same champion
(the same forecast for the same record) from a plain copy of the sealed artifact, as a user without our store would
keep it. Correctness only: the timings it prints are never asserted."""

from __future__ import annotations

import pytest

from bench import rest

FEW = {"api": {1: 4, 100: 2}, "peer": {1: 4, 100: 2}, "bare": {1: 4, 100: 2}}


@pytest.mark.timeout(600)
def test_the_rest_bench_serves_the_same_champion_three_ways_and_gives_its_verdict(server_url: str) -> None:
    said: list[str] = []
    results = rest.measure(server_url, said.append, soak=0, requests_per_shape=FEW)

    for name, counts in FEW.items():
        for key, expected in ((f"{name}_1_1client", counts[1]), (f"{name}_1", counts[1]), (f"{name}_100", counts[100])):
            assert (results[key]["requests"], results[key]["failed"]) == (expected, 0), (key, results[key])
    pair = results["same_forecast"]
    assert abs(pair["api"] - pair["peer"]) <= 1e-6 * max(abs(pair["peer"]), 1.0), pair
    assert len(said) == 9  # one line per endpoint and shape
    verdict = rest.verdict(results)
    assert "REST against the hand-written peer" in verdict and "soak" not in results
