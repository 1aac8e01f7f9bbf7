"""`python -m pipeline ARGS` for tests: in this process (`cli_in_process`, the default) or as a real subprocess
(`cli_subprocess`, only where the process itself is what a test checks). Both give a `CompletedProcess`: the exit
status, stdout and stderr the operator would see."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from pipeline.contract.settings import PROJECT_ROOT

Cli = Callable[..., subprocess.CompletedProcess[str]]  # `python -m pipeline ARGS`, as the two helpers below give it

# Loggers whose level `pipeline.cli.main.main` sets (with the root's): put back after each in-process command.
CLI_LOGGERS = ("", "pipeline", "great_expectations")


def cli_subprocess(env: dict[str, str]) -> Cli:
    """`python -m pipeline ARGS` in a new interpreter in the project folder, with exactly this environment."""
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=PROJECT_ROOT, env=env,
                              capture_output=True, text=True, timeout=300, check=False)
    return run


def cli_in_process(env: dict[str, str]) -> Cli:
    """`python -m pipeline ARGS` as `pipeline.cli.main.main(ARGS)` in this process, giving what `cli_subprocess(env)`
    gives: the environment is exactly `env`, `sys.argv` and the folder are the real process's while it runs, its
    logging goes to its own stderr as a fresh interpreter's would, and everything it changed is put back
    afterwards."""
    from pipeline.cli.main import main

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        out, err = io.StringIO(), io.StringIO()
        with as_a_new_process(env, args), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main(list(args))
            except SystemExit as exc:  # argparse's refusals (exit status 2) and --help
                status = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
            except Exception:  # noqa: BLE001 - what the interpreter does with an uncaught exception
                traceback.print_exc()
                status = 1
        return subprocess.CompletedProcess(["python", "-m", "pipeline", *args], status, out.getvalue(),
                                           err.getvalue())
    return run


@contextlib.contextmanager
def as_a_new_process(env: dict[str, str], args: tuple[str, ...]) -> Iterator[None]:
    """Inside: exactly `env` as the environment, `python -m pipeline ARGS`'s `sys.argv` (the access log records
    it), the project folder as the current one, and the root logger with no handler (so the command's
    `logging.basicConfig` writes to the stderr it sees). Outside again: the test's environment, argv, folder,
    logging and Arrow memory pool (a stage switches it), whatever the command did."""
    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), sys.argv
    loggers = [logging.getLogger(name) for name in CLI_LOGGERS]
    saved_levels, saved_handlers = [lg.level for lg in loggers], logging.root.handlers[:]
    saved_pool = sys.modules["pyarrow"].default_memory_pool() if "pyarrow" in sys.modules else None
    os.environ.clear()
    os.environ.update(env)
    os.chdir(PROJECT_ROOT)
    sys.argv = [str(PROJECT_ROOT / "pipeline" / "__main__.py"), *args]
    logging.root.handlers = []
    try:
        yield
    finally:
        for handler in logging.root.handlers:
            handler.close()
        logging.root.handlers = saved_handlers
        for logger, level in zip(loggers, saved_levels, strict=True):
            logger.setLevel(level)
        if saved_pool is not None:
            sys.modules["pyarrow"].set_memory_pool(saved_pool)
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)


def output(result: subprocess.CompletedProcess[str]) -> Any:
    """The command's JSON output, after checking it succeeded."""
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
