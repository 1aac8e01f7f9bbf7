"""The suite cannot hang and cannot go green by skipping: a test past its timeout fails, and on CI a missing
browser or Redis fails the run instead of skipping the tests that need them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.contract.settings import PROJECT_ROOT


def test_a_test_that_sleeps_past_its_timeout_fails(tmp_path: Path) -> None:
    (tmp_path / "test_sleeper.py").write_text("import time\n\ndef test_sleeps():\n    time.sleep(3600)\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", "2",
                             str(tmp_path / "test_sleeper.py")], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, check=False)  # generous: pytest's own start is slow on a busy machine
    assert result.returncode == 1, result.stdout[-2000:]
    assert "Timeout" in result.stdout and "1 failed" in result.stdout


def test_the_suite_has_a_default_timeout() -> None:
    text = (PROJECT_ROOT / "pyproject.toml").read_text()
    assert "\ntimeout = " in text


def _path_without(tmp_path: Path, *hidden: str) -> str:
    """A PATH of one folder holding links to the tools .ci/require-tools asks for, less `hidden`."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in ("id", "chromium", "chromedriver", "redis-server", "softhsm2-util"):
        found = shutil.which(tool)
        if tool not in hidden:
            (folder / tool).symlink_to(found or "/bin/true")  # a stand-in: only presence is looked at
    return str(folder)


def _require_tools(path: str, ci: bool) -> subprocess.CompletedProcess[str]:
    env = {"PATH": path, "CI_NO_INSTALL": "1", **({"CI": "true"} if ci else {})}
    return subprocess.run(["/bin/bash", str(PROJECT_ROOT / ".ci" / "require-tools")], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_on_ci_a_missing_browser_or_redis_fails_the_run(tmp_path: Path) -> None:
    for hidden in (("chromium",), ("chromedriver",), ("redis-server",), ("softhsm2-util",)):
        folder = tmp_path / "-".join(hidden)
        folder.mkdir()
        result = _require_tools(_path_without(folder, *hidden), ci=True)
        assert result.returncode == 1 and "missing on CI" in result.stderr, (hidden, result.stderr)
        named = {("redis-server",): "redis-server", ("softhsm2-util",): "softhsm2"}.get(hidden, "chromium")
        assert named in result.stderr


def test_off_ci_a_missing_tool_is_a_warning_and_with_every_tool_nothing_is_said(tmp_path: Path) -> None:
    (tmp_path / "some").mkdir()
    warned = _require_tools(_path_without(tmp_path / "some", "chromium"), ci=False)
    assert warned.returncode == 0 and "will skip" in warned.stderr
    (tmp_path / "all").mkdir()
    complete = _require_tools(_path_without(tmp_path / "all"), ci=True)
    assert complete.returncode == 0 and complete.stderr == ""


def test_ci_run_checks_the_tools_before_the_tests() -> None:
    lines = [line.strip() for line in (PROJECT_ROOT / ".ci" / "run").read_text().splitlines()]
    assert lines.index("bash .ci/require-tools") < lines.index("make test")
    assert os.access(PROJECT_ROOT / ".ci" / "require-tools", os.X_OK)


def test_airflow_starts_only_for_a_test_that_requested_starts_airflow(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    """A new test that starts Airflow without the fixture would run under xdist beside the others: refused."""
    from tests.conftest import STARTS_AIRFLOW
    from tests.standalone import scratch_airflow

    monkeypatch.delenv(STARTS_AIRFLOW, raising=False)
    with pytest.raises(RuntimeError, match="starts_airflow"), scratch_airflow("postgresql://unused/x", tmp_path,
                                                                               tmp_path / "pipeline.yaml"):
        pass
    assert not list(tmp_path.iterdir())  # refused before anything was made
