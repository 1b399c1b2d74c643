"""Fixtures of the integration tests (the session's Kafka and PostgreSQL are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from connector.sandbox import RunningSandbox, start_sandbox


@pytest.fixture
def sandbox() -> Iterator[RunningSandbox]:
    """A Kingdee sandbox over HTTP on a free loopback port, with the default configuration (the shipped chart)."""
    sb = start_sandbox(seed=7)
    yield sb
    sb.stop()
