"""A task's large blocks go back to the machine when freed (pipeline.runtime.memory): glibc's threshold is fixed."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import subprocess
import sys
import weakref
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# In a process of its own: once set, the threshold holds for the whole process, so the pytest process
# (which has run stages) says nothing about what a fresh task process does without the call.
PROBE = """
import ctypes, ctypes.util, json, sys
import numpy as np

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2

def mapped_for(nbytes):
    np.ones(16 << 20, dtype=np.uint8)  # made and freed: a mapped block; glibc then raises its threshold to 16 MiB
    before = libc.mallinfo2().hblkhd
    block = np.ones(nbytes, dtype=np.uint8)
    grown = libc.mallinfo2().hblkhd - before
    del block
    return grown

if sys.argv[1] == "task":
    from pipeline.runtime import memory
    memory.system_arrow_pool()
print(json.dumps({"mapped": mapped_for(6 << 20), "small": mapped_for(1 << 20)}))
"""


def glibc_with_mallinfo2() -> bool:
    name = ctypes.util.find_library("c")
    try:
        return bool(name) and hasattr(ctypes.CDLL(name), "mallinfo2")
    except OSError:
        return False


def mapped_bytes(mode: str) -> dict[str, int]:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.mark.skipif(not glibc_with_mallinfo2(), reason="needs glibc 2.33+ (mallinfo2) to see mapped blocks")
def test_a_task_process_maps_each_large_block_on_its_own_so_freeing_it_returns_it() -> None:
    from pipeline.runtime.memory import MAPPED_BLOCK_BYTES

    assert (1 << 20) < MAPPED_BLOCK_BYTES <= (6 << 20)  # the probe's sizes sit either side of the threshold
    task, plain = mapped_bytes("task"), mapped_bytes("plain")
    assert task["mapped"] >= 6 << 20, task  # its own mapping, unmapped when freed
    assert task["small"] < 1 << 20, task  # below the threshold: from the heap, reused
    assert plain["mapped"] < 6 << 20, plain  # without the call glibc's raised threshold keeps it in the heap


class Node:
    """An object in a reference cycle: only the garbage collector frees it."""

    def __init__(self) -> None:
        self.me = self


def cycle() -> weakref.ref[Node]:
    return weakref.ref(Node())


def test_a_stage_collects_what_it_made_and_passes_over_what_was_there() -> None:
    from pipeline.runtime import memory

    gc.collect()
    before = Node()  # alive when the stage begins, garbage during it
    seen_before = weakref.ref(before)

    with memory.collect_new_only():
        assert gc.get_freeze_count() > 0
        del before
        made = cycle()
        memory.give_back()
        assert made() is None  # the stage's own garbage is collected
        assert seen_before() is not None  # what existed before is passed over

    assert gc.get_freeze_count() == 0
    gc.collect()
    assert seen_before() is None  # and collected as before once the stage is over


def test_a_failing_stage_leaves_nothing_frozen() -> None:
    from pipeline.runtime import memory

    with pytest.raises(RuntimeError, match="stage failed"), memory.collect_new_only():
        raise RuntimeError("stage failed")

    assert gc.get_freeze_count() == 0
