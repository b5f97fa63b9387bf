"""`python -m common.relay CMD...`: runs CMD with its stdout and stderr on a pipe of our
own, and copies that pipe to our stdout.

supervisord reopens /dev/stdout for its log and every program's. When our stdout
belongs to someone else - a container runtime's pipe created by root while the image
runs as the app user, a terminal after `su` - that open fails with EACCES. A pipe made
here is the running user's own, so the open works; we only write to the stdout we
inherited, which needs no open. SIGTERM, SIGINT and SIGHUP go to CMD; we exit with
its status once it and everything holding the pipe is done."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from types import FrameType

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
CHUNK = 65536


def copy(source: int, target: int) -> None:
    """Copies until end of file; once `target` is gone, keeps reading (and dropping) so
    that the writers never block on a full pipe."""
    writable = True
    while True:
        try:
            data = os.read(source, CHUNK)
        except InterruptedError:
            continue
        if not data:
            return
        while writable and data:
            try:
                data = data[os.write(target, data) :]
            except InterruptedError:
                continue
            except OSError:  # our stdout closed (EPIPE): nothing more can be shown
                writable = False


def run(argv: list[str], stdout: int = 1) -> int:
    read_end, write_end = os.pipe()
    try:
        child = subprocess.Popen(argv, stdout=write_end, stderr=write_end)
    except OSError as exc:
        os.close(read_end)
        os.close(write_end)
        print(f"relay: cannot run {argv[0]}: {exc.strerror}", file=sys.stderr)
        return 127
    os.close(write_end)

    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    copy(read_end, stdout)
    os.close(read_end)
    status = child.wait()
    return status if status >= 0 else 128 - status


def main() -> int:
    if len(sys.argv) < 2:
        print("usage: python -m common.relay COMMAND [ARG...]", file=sys.stderr)
        return 64
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    return run(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
