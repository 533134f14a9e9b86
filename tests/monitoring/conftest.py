"""Fixtures for the observability tests: the Prometheus tool binaries and a scratch copy of the
generated monitoring tree."""

from __future__ import annotations

import pytest

from tests.helpers import require_binary


@pytest.fixture
def promtool() -> str:
    return require_binary("promtool")


@pytest.fixture
def amtool() -> str:
    return require_binary("amtool")
