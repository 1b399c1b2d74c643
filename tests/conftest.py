"""Session fixtures: the real services of the integration tests (their other fixtures: tests/integration/conftest.py;
shared helpers: tests/unit/helpers.py, tests/integration/helpers.py).

Integration fixtures start a real Apache Kafka broker (KRaft) and a real PostgreSQL once per session.
Escape hatches to existing services: ``KDCDC_TEST_BOOTSTRAP`` (Kafka bootstrap servers) and
``KDCDC_TEST_DSN`` (a PostgreSQL DSN whose user may create databases).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from harness.devstack import EmbeddedPostgres, KafkaBroker


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def _private_dir(name: str) -> Path:
    """A data directory of a session service outside pytest's basetemp: pytest removes old basetemp
    directories when another run starts, which would pull a running PostgreSQL's data from under it."""
    return Path(tempfile.mkdtemp(prefix=f"kdcdc-test-{name}-"))


# --------------------------------------------------------------------------- Kafka
@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = os.environ.get("KDCDC_TEST_BOOTSTRAP")
    if env:
        yield env
        return
    workdir = _private_dir("kafka")
    broker = KafkaBroker(workdir).start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def topic_factory(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """Create uniquely named topics (deleted afterwards)."""
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    created: list[str] = []

    def make(prefix: str = "t", partitions: int = 1) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        futures[name].result(30)
        created.append(name)
        return name

    yield make
    if created:
        for f in admin.delete_topics(created).values():
            try:
                f.result(30)
            except Exception:
                pass


# --------------------------------------------------------------------------- PostgreSQL
@pytest.fixture(scope="session")
def pg_server_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = os.environ.get("KDCDC_TEST_DSN")
    if env:
        yield env
        return
    workdir = _private_dir("pg")
    pg = EmbeddedPostgres(workdir, durable=False).start()
    try:
        yield pg.dsn()
    finally:
        pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def pg_dsn(pg_server_dsn: str) -> Iterator[str]:
    """A fresh, empty database for one test (dropped afterwards)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    info = psycopg.conninfo.conninfo_to_dict(pg_server_dsn)
    info["dbname"] = name
    yield psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items() if v is not None})
    with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
