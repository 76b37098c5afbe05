"""Shared fixtures: every async test runs on asyncio and on Trio.

Tests marked ``slow`` (soak, load, long fuzz runs) are skipped unless
``STREAMKIT_SLOW=1`` is set, as ``bash scripts/soak`` does; with it, hypothesis runs
the ``long`` profile.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

SLOW = os.environ.get("STREAMKIT_SLOW") == "1"

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.register_profile("long", parent=settings.get_profile("default"), max_examples=5000)
settings.load_profile("long" if SLOW else "default")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``slow`` tests unless ``STREAMKIT_SLOW=1``."""
    if SLOW:
        return
    skip = pytest.mark.skip(reason="slow: run with `bash scripts/soak` (STREAMKIT_SLOW=1)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test once per backend."""
    return str(request.param)
