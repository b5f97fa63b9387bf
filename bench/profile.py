"""py-spy (from bench/.venv-peers) on a running process, and a plain-text summary.

`make bench BENCH_ARGS=--profile` samples one worker during the stand-in-0-ms,
1-worker throughput run and one of our no-op workers during its throughput phase,
and writes profile-*.txt beside the run's raw results: the functions where the
sampled threads were (self) and the call paths they were under (inclusive).

    python -m bench.profile RAW_FILE [N]   # summarise a py-spy --format raw file"""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path


def start(
    py_spy: Path, pid: int, seconds: float, raw: Path, gil: bool = False
) -> subprocess.Popen[bytes]:
    """py-spy record in the background; wait() on the result, then summarize(raw)."""
    args = [
        str(py_spy),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        "250",
        "--format",
        "raw",
        "--output",
        str(raw),
        "--nonblocking",
    ]
    if gil:
        args.append("--gil")
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize(raw: Path, top: int = 25) -> str:
    stacks: list[tuple[list[str], int]] = []
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    total = sum(c for _, c in stacks) or 1
    own: collections.Counter[str] = collections.Counter()
    under: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        own[frames[-1]] += count
        for frame in set(frames):
            under[frame] += count
    out = [f"{total} samples of {raw.name}", "", "self:"]
    out += [f"  {100 * c / total:5.1f} %  {f}" for f, c in own.most_common(top)]
    out += ["", "inclusive:"]
    out += [f"  {100 * c / total:5.1f} %  {f}" for f, c in under.most_common(top + 15)]
    return "\n".join(out)


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 25))
