"""The contention variant: a fixed background CPU load, the same for every system.

One busy process per core at the lowest priority (nice 19). The scheduler gives the
measured processes (nice 0) nearly all of the CPU they ask for, but every wake-up now
finds a core busy with something else: the case where a thread waiting on the GIL, a
listener's wake-up or a pool checkout shows in the tail."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

NICE = 19
# Says "ready" once at its priority, then spins.
SPIN = f"import os\nos.nice({NICE})\nprint('ready', flush=True)\nwhile True:\n    pass\n"


@contextlib.contextmanager
def background_load(processes: int | None = None) -> Iterator[dict[str, Any]]:
    """Runs `processes` (default: one per core) busy loops at nice 19 until the block ends;
    yields what was started, for the report."""
    count = processes or os.cpu_count() or 1
    spinners = [
        subprocess.Popen(
            [sys.executable, "-c", SPIN], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
        )
        for _ in range(count)
    ]
    try:
        for spinner in spinners:
            assert spinner.stdout is not None
            if spinner.stdout.readline() != b"ready\n":
                raise RuntimeError("contention: a busy process did not start")
        yield {"processes": count, "nice": NICE}
    finally:
        for spinner in spinners:
            spinner.kill()
        for spinner in spinners:
            spinner.wait()
            if spinner.stdout is not None:
                spinner.stdout.close()
