"""``python -m stripe_standin``: run the stand-in until SIGTERM/SIGINT.

``python -m stripe_standin pay|3ds|settle|capture|refund ...`` instead acts as a customer
(or a dashboard user) (see
:mod:`stripe_standin.cli`); every other command line starts the server as before.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from stripe_standin.config import load_config
from stripe_standin.server import run

COMMANDS = ("pay", "3ds", "settle", "capture", "refund")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags and ``STANDIN_*`` variables, then serve; or run a customer subcommand."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        from stripe_standin import cli  # noqa: PLC0415 - the server never needs the SDK

        return cli.main(args)
    return run(load_config(args))


if __name__ == "__main__":
    sys.exit(main())
