"""Versioned SQL migrations for the journal, applied at start and by ``kingdee-cdc journal migrate``.

Each ``migrations/NNNN_name.sql`` runs once, in its own transaction, under an advisory lock so that
several instances starting together do not race. ``{schema}`` in the files is the configured schema.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

import psycopg
from psycopg import sql

MIGRATIONS: Final = Path(__file__).resolve().parent / "migrations"
_LOCK_ID: Final = 0x6B64_6364  # "kdcd"


def available() -> list[tuple[int, str, Path]]:
    out = []
    for p in sorted(MIGRATIONS.glob("*.sql")):
        m = re.match(r"^(\d{4})_(.+)\.sql$", p.name)
        if m:
            out.append((int(m.group(1)), m.group(2), p))
    return out


def migrate(conn: psycopg.Connection[object], schema: str) -> list[int]:
    """Apply pending migrations; returns the versions applied now (empty when up to date)."""
    applied: list[int] = []
    ident = sql.Identifier(schema)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {}.schema_migrations (version integer PRIMARY KEY, "
                             "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())").format(ident))
        cur = conn.execute(sql.SQL("SELECT version FROM {}.schema_migrations").format(ident))
        done = {int(r[0]) for r in cur.fetchall()}  # type: ignore[index]
        for version, name, path in available():
            if version in done:
                continue
            text = path.read_text(encoding="utf-8").replace("{schema}", f'"{schema}"')
            conn.execute(text.encode())
            conn.execute(sql.SQL("INSERT INTO {}.schema_migrations (version, name) VALUES (%s, %s)").format(ident),
                         (version, name))
            applied.append(version)
    return applied
