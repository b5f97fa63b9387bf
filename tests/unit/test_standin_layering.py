"""The stand-in stands alone: it knows nothing of the service it stands in for, and only the
customer subcommands use the stripe SDK (the server speaks HTTP, it is no SDK client)."""

from pathlib import Path

import pytest

from tests.unit.test_layering import ROOT, imported, sources, within

SERVICE_PACKAGES = ("worker", "webhooks", "metrics", "common", "tests")


@pytest.mark.parametrize("path", sources("stripe_standin"), ids=lambda p: p.name)
def test_the_stand_in_imports_nothing_of_the_service(path: Path) -> None:
    names = imported(path)
    assert not [p for p in SERVICE_PACKAGES if within(names, p)], path


def test_only_the_customer_subcommands_use_the_sdk() -> None:
    users = sorted(
        p.relative_to(ROOT).as_posix()
        for p in sources("stripe_standin")
        if within(imported(p), "stripe")
    )
    assert users == ["stripe_standin/cli.py"]
