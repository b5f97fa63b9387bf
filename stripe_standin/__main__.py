"""``python -m stripe_standin``: run the stand-in until SIGTERM/SIGINT."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from stripe_standin.config import load_config
from stripe_standin.server import run


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags and ``STANDIN_*`` variables, then serve."""
    return run(load_config(argv))


if __name__ == "__main__":
    sys.exit(main())
