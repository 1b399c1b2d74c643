"""Real Debezium in the loop: business databases in PostgreSQL captured by Debezium into Kafka.

* :class:`BusinessDatabases` creates the sample business databases (POS sales with lines, purchase
  invoices, payroll) in a PostgreSQL server that runs with ``wal_level=logical`` and writes realistic
  changes into them with plain SQL — exactly what the source applications would do.
* :class:`KafkaConnect` runs a standalone Apache Kafka Connect worker (jars from Maven Central,
  ``deploy/connect/pom.xml``) with the Debezium PostgreSQL connector plugin (``deploy/debezium/pom.xml``),
  one connector per business database, JSON converters *with* schemas (no schema registry runs here), so
  decimals arrive as Connect ``Decimal`` (base64 bytes) and dates as ``io.debezium.time.*``.

Topic names follow Debezium: ``<system>.public.<table>`` where ``<system>`` is the connector's
``topic.prefix`` — the source-system identity our rules match on.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import httpx
import psycopg

from harness.devstack import REPO_ROOT, JavaService, _tail, ensure_maven_jars, free_port, log4j2_yaml
from connector.errors import DevStackError
from harness.samples import PAYROLL, POS, PURCHASING, SampleGenerator, SampleTable

CONNECT_POM: Final = REPO_ROOT / "deploy" / "connect" / "pom.xml"
DEBEZIUM_POM: Final = REPO_ROOT / "deploy" / "debezium" / "pom.xml"
CONNECT_LIB: Final = REPO_ROOT / "deploy" / "connect" / "lib"
PLUGIN_DIR: Final = REPO_ROOT / "deploy" / "debezium" / "plugins"


def ensure_connect_jars() -> tuple[Path, Path]:
    """The Connect worker's classpath directory and the plugin path (resolved with Maven once)."""
    lib = ensure_maven_jars(CONNECT_POM, CONNECT_LIB, "Apache Kafka Connect")
    ensure_maven_jars(DEBEZIUM_POM, PLUGIN_DIR / "debezium-postgres", "Debezium PostgreSQL connector")
    return lib, PLUGIN_DIR


# --------------------------------------------------------------------------- business databases
#: DDL per source system: the tables a POS, a purchasing and a payroll application keep.
DDL: Final[Mapping[str, str]] = {
    "pos": """
        CREATE TABLE sales_order (
            id bigint PRIMARY KEY, order_no text NOT NULL, channel text NOT NULL, store_code text NOT NULL,
            company_code text NOT NULL, customer_code text, order_date date NOT NULL, currency text NOT NULL,
            net_amount numeric(18,2) NOT NULL, tax_amount numeric(18,2) NOT NULL,
            gross_amount numeric(18,2) NOT NULL, points_deduction numeric(18,2) NOT NULL,
            payment_method text NOT NULL, status text NOT NULL, created_at timestamp NOT NULL,
            updated_at timestamptz);
        CREATE TABLE sales_order_line (
            id bigint PRIMARY KEY, order_id bigint NOT NULL REFERENCES sales_order(id) ON DELETE CASCADE,
            line_no int NOT NULL, sku text NOT NULL, quantity numeric(18,4) NOT NULL,
            amount numeric(18,2) NOT NULL);
        ALTER TABLE sales_order REPLICA IDENTITY FULL;
        ALTER TABLE sales_order_line REPLICA IDENTITY FULL;
    """,
    "purchasing": """
        CREATE TABLE purchase_invoice (
            id bigint PRIMARY KEY, invoice_no text NOT NULL, supplier_code text NOT NULL,
            supplier_class text NOT NULL, region text NOT NULL, company_code text NOT NULL,
            invoice_date date NOT NULL, category text NOT NULL, expense_item text, department_code text,
            currency text NOT NULL, exchange_rate numeric(18,6) NOT NULL, net_amount numeric(18,2) NOT NULL,
            tax_amount numeric(18,2) NOT NULL, gross_amount numeric(18,2) NOT NULL,
            payment_terms text NOT NULL, created_at timestamp NOT NULL);
        ALTER TABLE purchase_invoice REPLICA IDENTITY FULL;
    """,
    "payroll": """
        CREATE TABLE payroll_line (
            id bigint PRIMARY KEY, run_id text NOT NULL, period text NOT NULL, employee_code text NOT NULL,
            department_code text NOT NULL, company_code text NOT NULL, pay_date date NOT NULL,
            gross_salary numeric(18,2) NOT NULL, social_insurance_company numeric(18,2) NOT NULL,
            social_insurance_employee numeric(18,2) NOT NULL, income_tax numeric(18,2) NOT NULL,
            net_pay numeric(18,2) NOT NULL);
        ALTER TABLE payroll_line REPLICA IDENTITY FULL;
    """,
}
#: The table each system's rows go to, and every table Debezium captures for it.
MAIN_TABLE: Final[Mapping[str, SampleTable]] = {"pos": POS, "purchasing": PURCHASING, "payroll": PAYROLL}
CAPTURED: Final[Mapping[str, tuple[str, ...]]] = {
    "pos": ("public.sales_order", "public.sales_order_line"),
    "purchasing": ("public.purchase_invoice",),
    "payroll": ("public.payroll_line",),
}


def database_name(system: str) -> str:
    return f"{system}db"


def init_sql() -> str:
    """psql script creating the journal and business databases with their tables (docker-compose's
    ``deploy/compose/init-business.sql`` is this text; a test keeps them equal)."""
    import textwrap

    out = ["-- Generated from harness/debezium.py (init_sql); tests/unit/test_deploy.py keeps them equal.",
           "-- The journal database and one business database per source system, with the sample tables.",
           "CREATE DATABASE journal;"]
    for system, ddl in DDL.items():
        out += [f"CREATE DATABASE {database_name(system)};", f"\\connect {database_name(system)}",
                textwrap.dedent(ddl).strip(), "\\connect postgres"]
    return "\n".join(out) + "\n"


def _insert(conn: psycopg.Connection[Any], table: str, row: Mapping[str, Any]) -> None:
    cols = list(row)
    conn.execute(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})",  # noqa: S608
                 [_sql_value(row[c]) for c in cols])


def _sql_value(v: Any) -> Any:
    # created_at is a "timestamp without time zone" column: store the UTC wall clock.
    if isinstance(v, datetime) and v.tzinfo is not None:
        return v.replace(tzinfo=None)
    return v


@dataclass(slots=True)
class BusinessChange:
    """One change made in a business database, for checking what arrives downstream."""

    system: str
    table: str
    op: str  # c | u | d
    row_id: int
    row: dict[str, Any] | None  # the row after the change (None for a delete)


class BusinessDatabases:
    """The sample business databases inside one PostgreSQL server (one database per source system).

    Each change is its own source transaction (an order and its lines commit together), written over one
    connection per system, as the business application would. ``expected_records`` counts the Kafka
    records Debezium will write for the changes made (tombstones and order lines included).
    """

    def __init__(self, server_dsn: str, systems: Sequence[str] = ("pos", "purchasing", "payroll"),
                 *, seed: int = 11, start: date = date(2026, 11, 2)) -> None:
        self.server_dsn = server_dsn
        self.systems = tuple(systems)
        self.gen = SampleGenerator(seed=seed, start=start)
        self.rows: dict[str, dict[int, dict[str, Any]]] = {s: {} for s in self.systems}
        self.lines: dict[int, int] = {}  # order id → number of lines
        self.changes: list[BusinessChange] = []
        self.expected_records: dict[str, int] = {f"{s}.{t}": 0 for s in self.systems for t in CAPTURED[s]}
        self.bad: set[tuple[str, int]] = set()  # rows made deliberately wrong (expected to be rejected)
        self._line_id = 0
        self._conns: dict[str, psycopg.Connection[Any]] = {}

    def dsn(self, system: str) -> str:
        base, _, _ = self.server_dsn.rpartition("/")
        return f"{base}/{database_name(system)}"

    def create(self) -> BusinessDatabases:
        with psycopg.connect(self.server_dsn, autocommit=True) as conn:
            for system in self.systems:
                db = database_name(system)
                conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{db}"')
        for system in self.systems:
            with psycopg.connect(self.dsn(system), autocommit=True) as conn:
                conn.execute(DDL[system])  # trusted constant DDL
        return self

    def _conn(self, system: str) -> psycopg.Connection[Any]:
        conn = self._conns.get(system)
        if conn is None or conn.closed:
            conn = self._conns[system] = psycopg.connect(self.dsn(system))
        return conn

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def expect_snapshot(self) -> None:
        """Debezium is about to start: its snapshot emits one record per *current* row, whatever changes
        (updates, deletes) happened before — reset the expected record counts to that."""
        for system in self.systems:
            table = MAIN_TABLE[system].table
            self.expected_records[f"{system}.public.{table}"] = len(self.rows[system])
            if system == "pos":
                self.expected_records["pos.public.sales_order_line"] = sum(
                    self.lines.get(rid, 0) for rid in self.rows[system])

    def _count(self, system: str, table: str, n: int = 1) -> None:
        self.expected_records[f"{system}.public.{table}"] += n

    # -- changes, each in its own source transaction (or several rows in one, like an application does)
    def insert(self, system: str, *, lines: int = 0, **overrides: Any) -> BusinessChange:
        """Insert one business row (a POS order with ``lines`` order lines in the same transaction)."""
        table = MAIN_TABLE[system]
        row = self.gen.row(table) | overrides
        conn = self._conn(system)
        with conn.transaction():
            _insert(conn, table.table, row)
            share = (row["gross_amount"] / lines).quantize(Decimal("0.01")) if lines else Decimal(0)
            for n in range(lines):
                self._line_id += 1
                # the lines add up to the order's gross: the last one takes the cents the split leaves over
                amount = share if n < lines - 1 else row["gross_amount"] - share * (lines - 1)
                _insert(conn, "sales_order_line", {"id": self._line_id, "order_id": row["id"], "line_no": n + 1,
                                                   "sku": f"SKU{n + 1:03d}", "quantity": Decimal("1.0000"),
                                                   "amount": amount})
        self.rows[system][row["id"]] = row
        self._count(system, table.table)
        if lines:
            self.lines[row["id"]] = lines
            self._count(system, "sales_order_line", lines)
        change = BusinessChange(system, table.table, "c", row["id"], dict(row))
        self.changes.append(change)
        return change

    def update(self, system: str, row_id: int, **values: Any) -> BusinessChange:
        table = MAIN_TABLE[system]
        row = self.rows[system][row_id] | values
        sets = ", ".join(f"{k} = %s" for k in values)
        conn = self._conn(system)
        with conn.transaction():
            conn.execute(f"UPDATE {table.table} SET {sets} WHERE id = %s",  # noqa: S608
                         [*(_sql_value(v) for v in values.values()), row_id])
        self.rows[system][row_id] = row
        self._count(system, table.table)
        change = BusinessChange(system, table.table, "u", row_id, dict(row))
        self.changes.append(change)
        return change

    def delete(self, system: str, row_id: int) -> BusinessChange:
        table = MAIN_TABLE[system]
        conn = self._conn(system)
        with conn.transaction():
            if system == "pos":
                conn.execute("DELETE FROM sales_order_line WHERE order_id = %s", [row_id])
            conn.execute(f"DELETE FROM {table.table} WHERE id = %s", [row_id])  # noqa: S608
        del self.rows[system][row_id]
        self._count(system, table.table, 2)  # the delete and its tombstone
        if system == "pos":
            self._count(system, "sales_order_line", 2 * self.lines.pop(row_id, 0))
        change = BusinessChange(system, table.table, "d", row_id, None)
        self.changes.append(change)
        return change

    def traffic(self, n: int, *, seed: int = 5, bad_every: int = 97) -> Iterator[BusinessChange]:
        """``n`` realistic business changes: mostly new documents, some corrections and cancellations,
        and a deliberately wrong one every ``bad_every`` (a credit sale without a customer)."""
        rng = random.Random(seed)
        for i in range(n):
            system = rng.choices(self.systems, weights=[6, 2, 2][:len(self.systems)])[0]
            live = [rid for rid in self.rows[system] if (system, rid) not in self.bad]
            roll = rng.random()
            if bad_every and i % bad_every == bad_every - 1 and system == "pos":
                change = self.insert("pos", lines=1, payment_method="CREDIT", customer_code=None)
                self.bad.add(("pos", change.row_id))
            elif live and roll < 0.08:
                rid = rng.choice(live)
                change = self.update(system, rid, **_correction(system, self.rows[system][rid], rng))
            elif live and roll < 0.12:
                change = self.delete(system, rng.choice(live))
            else:
                extra: dict[str, Any] = {}
                if system == "pos" and self.gen.rng.random() < 0.2:
                    extra = {"payment_method": "CREDIT", "customer_code": f"C{rng.randint(1, 50):04d}"}
                change = self.insert(system, lines=rng.randint(1, 3) if system == "pos" else 0, **extra)
                row = change.row or {}
                if system == "pos" and row.get("payment_method") == "CREDIT" and not row.get("customer_code"):
                    self.bad.add(("pos", change.row_id))  # the generator's own cashier mistake
            yield change

    def source_debits(self) -> dict[tuple[str, str], Decimal]:
        """What the shipped rules debit for the live, well-formed rows: (system, currency) → amount,
        read back from the business databases themselves."""
        queries = {
            "pos": "SELECT id, currency, gross_amount FROM sales_order WHERE status = 'PAID'",
            "purchasing": "SELECT id, currency, gross_amount FROM purchase_invoice",
            "payroll": "SELECT id, 'CNY', gross_salary + social_insurance_company FROM payroll_line",
        }
        out: dict[tuple[str, str], Decimal] = {}
        for system in self.systems:
            with psycopg.connect(self.dsn(system)) as conn:
                for rid, currency, amount in conn.execute(queries[system]):
                    if (system, rid) in self.bad:
                        continue
                    out[(system, currency)] = out.get((system, currency), Decimal("0.00")) + amount
        return out

    def topics(self) -> list[str]:
        """Every topic Debezium writes for these systems (data tables; not the transaction topics)."""
        return list(self.expected_records)


def _correction(system: str, row: Mapping[str, Any], rng: random.Random) -> dict[str, Any]:
    """A realistic correction of a document: new amounts (consistent with each other) or a new attribute."""
    factor = Decimal(rng.choice(("0.90", "1.05", "1.10")))
    if system == "pos":
        gross = (row["gross_amount"] * factor).quantize(Decimal("0.01"))
        net = (gross / Decimal("1.13")).quantize(Decimal("0.01"))
        points = min(row["points_deduction"], gross)
        return {"gross_amount": gross, "net_amount": net, "tax_amount": gross - net, "points_deduction": points}
    if system == "purchasing":
        net = (row["net_amount"] * factor).quantize(Decimal("0.01"))
        tax = (net * Decimal("0.13")).quantize(Decimal("0.01"))
        return {"net_amount": net, "tax_amount": tax, "gross_amount": net + tax}
    return {"department_code": rng.choice(("D01", "D02", "D03"))}


# --------------------------------------------------------------------------- Kafka Connect + Debezium
_CONNECT_LOG4J2: Final = log4j2_yaml("io.debezium", "org.apache.kafka.connect.runtime.Worker")


def connector_config(system: str, pg_host: str, pg_port: int, *, user: str = "postgres",
                     snapshot_mode: str = "initial", transaction_metadata: bool = True,
                     topic_prefix: str | None = None) -> dict[str, str]:
    """The Debezium PostgreSQL connector configuration for one business database. ``topic_prefix`` (default:
    the system name) is also the ``source.name`` of its events, which mapping rules match as the system."""
    prefix = topic_prefix or system
    return {
        "name": f"kdcdc-{prefix}",
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "tasks.max": "1",
        "database.hostname": pg_host,
        "database.port": str(pg_port),
        "database.user": user,
        "database.password": "unused-trust-auth",
        "database.dbname": database_name(system),
        "topic.prefix": prefix,
        "plugin.name": "pgoutput",
        "slot.name": f"kdcdc_{system}",
        "publication.name": f"kdcdc_{system}",
        "publication.autocreate.mode": "filtered",
        "table.include.list": ",".join(CAPTURED[system]),
        "snapshot.mode": snapshot_mode,
        "decimal.handling.mode": "precise",
        "provide.transaction.metadata": "true" if transaction_metadata else "false",
        "tombstones.on.delete": "true",
        "poll.interval.ms": "100",
        "status.update.interval.ms": "1000",
    }


class KafkaConnect(JavaService):
    """A standalone Kafka Connect worker on loopback running Debezium PostgreSQL connectors."""

    def __init__(self, workdir: Path, bootstrap: str, connectors: Iterable[Mapping[str, str]], *,
                 heap: str = "512m") -> None:
        self.workdir = Path(workdir)
        self.bootstrap = bootstrap
        self.connectors = [dict(c) for c in connectors]
        self.heap = heap
        self.rest_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "connect.log"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def _worker_properties(self, plugin_path: Path) -> str:
        props = {
            "bootstrap.servers": self.bootstrap,
            "key.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            "key.converter.schemas.enable": "true",
            "value.converter.schemas.enable": "true",
            "offset.storage.file.filename": str(self.workdir / "connect.offsets"),
            "offset.flush.interval.ms": "1000",
            "plugin.path": str(plugin_path),
            "plugin.discovery": "hybrid_warn",
            "listeners": f"http://127.0.0.1:{self.rest_port}",
            # Debezium's own producer: idempotent, every record acknowledged by the broker.
            "producer.acks": "all",
            "producer.linger.ms": "5",
        }
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def start(self, timeout: float = 120.0) -> KafkaConnect:
        java = shutil.which("java")
        if java is None:
            raise DevStackError("Java 17+ is needed to run Kafka Connect with Debezium "
                                "(apt-get install openjdk-17-jre-headless)")
        lib, plugins = ensure_connect_jars()
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "worker.properties").write_text(self._worker_properties(plugins))
        (self.workdir / "log4j2.yaml").write_text(_CONNECT_LOG4J2)
        files = []
        for c in self.connectors:
            path = self.workdir / f"{c['name']}.json"
            path.write_text(json.dumps(c))
            files.append(str(path))
        cmd = [java, f"-Xmx{self.heap}", "-Xms64m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
               "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.yaml'}",
               "-cp", f"{lib}/*", "org.apache.kafka.connect.cli.ConnectStandalone",
               str(self.workdir / "worker.properties"), *files]
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        logf.close()
        self.wait_running(timeout)
        return self

    def status(self) -> dict[str, Any]:
        """Connector and task states from the worker's REST API (``{}`` while it is not serving)."""
        out: dict[str, Any] = {}
        with httpx.Client(base_url=self.rest_url, timeout=2.0) as http:
            for c in self.connectors:
                r = http.get(f"/connectors/{c['name']}/status")
                if r.status_code == 200:
                    out[c["name"]] = r.json()
        return out

    def wait_running(self, timeout: float) -> None:
        """Until every connector and its task reports RUNNING; a FAILED task raises with its trace."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise DevStackError(f"Kafka Connect exited with {self.proc.returncode}:\n{_tail(self.log_path, 60)}")
            try:
                st = self.status()
            except httpx.HTTPError:
                st = {}
            if len(st) == len(self.connectors):
                failed = [t for s in st.values() for t in s.get("tasks", []) if t.get("state") == "FAILED"]
                if failed:
                    raise DevStackError(f"Debezium task failed: {failed[0].get('trace', '')[:3000]}")
                if all(s["connector"]["state"] == "RUNNING" and s.get("tasks")
                       and all(t["state"] == "RUNNING" for t in s["tasks"]) for s in st.values()):
                    return
            time.sleep(0.25)
        self.stop()
        raise DevStackError(f"Debezium connectors not running after {timeout:.0f}s:\n{_tail(self.log_path, 60)}")


# --------------------------------------------------------------------------- Debezium JDBC sink (peer benchmark)
JDBC_SINK_POM: Final = REPO_ROOT / "deploy" / "jdbc-sink" / "pom.xml"
JDBC_SINK_PLUGIN_DIR: Final = REPO_ROOT / "deploy" / "jdbc-sink" / "plugins"


def ensure_jdbc_sink_plugin() -> Path:
    """The plugin path holding the Debezium JDBC sink connector (``deploy/jdbc-sink/pom.xml``), unpacked once.

    Maven unpacks the connector's official plugin archive (``io.debezium:debezium-connector-jdbc:<v>:tar.gz:
    plugin``) into ``plugins/debezium-connector-jdbc/``; ``plugins/.resolved`` marks a completed resolution and
    editing the POM makes it stale (the old plugin directory is removed first, so versions never mix).
    """
    import sys  # (this module's imports are shared code: kept local to the peer-benchmark addition)

    marker = JDBC_SINK_PLUGIN_DIR / ".resolved"
    if marker.exists() and marker.stat().st_mtime >= JDBC_SINK_POM.stat().st_mtime:
        return JDBC_SINK_PLUGIN_DIR
    if shutil.which("mvn") is None:
        raise DevStackError("Maven (mvn) is needed once to fetch the Debezium JDBC sink connector from Maven "
                            "Central: apt-get install maven")
    print(f"kingdee-cdc: resolving the Debezium JDBC sink connector from Maven Central into "
          f"{JDBC_SINK_PLUGIN_DIR} …", file=sys.stderr)
    JDBC_SINK_PLUGIN_DIR.mkdir(parents=True, exist_ok=True)
    for old in JDBC_SINK_PLUGIN_DIR.iterdir():
        if old.is_dir():
            shutil.rmtree(old)
    res = subprocess.run(["mvn", "-q", "-B", "-f", str(JDBC_SINK_POM), "dependency:unpack",
                          f"-Dplugins.dir={JDBC_SINK_PLUGIN_DIR}"], capture_output=True, text=True)
    if res.returncode != 0 or not any(JDBC_SINK_PLUGIN_DIR.glob("*/debezium-connector-jdbc-*.jar")):
        raise DevStackError(f"Maven could not resolve the Debezium JDBC sink plugin (exit {res.returncode}):\n"
                            f"{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    marker.touch()
    return JDBC_SINK_PLUGIN_DIR


def jdbc_sink_config(name: str, topic: str, jdbc_url: str, table: str, *, user: str = "postgres",
                     batch_size: int = 500, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The Debezium JDBC sink connector configured as its documentation recommends for topics written by a
    Debezium source connector: no flattening SMT (the sink reads the change-event envelope itself: ``after``
    of creates and updates, deletes by key), upsert by the record key, deletes applied, the table created
    from the record schema (``schema.evolution=basic``), one task. The worker's converters (JSON with
    schemas) apply. ``batch_size`` is also the consumer's ``max.poll.records``."""
    return {
        "name": name,
        "connector.class": "io.debezium.connector.jdbc.JdbcSinkConnector",
        "tasks.max": "1",
        "topics": topic,
        "connection.url": jdbc_url,
        "connection.username": user,
        "connection.password": "unused-trust-auth",
        "insert.mode": "upsert",
        "primary.key.mode": "record_key",
        "delete.enabled": "true",
        "schema.evolution": "basic",
        "collection.name.format": table,
        "batch.size": str(batch_size),
        "consumer.override.max.poll.records": str(batch_size),
        **(extra or {}),
    }


class JdbcSinkConnect(KafkaConnect):
    """A standalone Kafka Connect worker whose plugin path is the Debezium JDBC sink connector's.

    Same worker as :class:`KafkaConnect` (same Connect runtime, JSON converters with schemas), plus
    ``worker_overrides`` appended to its properties (the last occurrence of a key wins).
    """

    def __init__(self, workdir: Path, bootstrap: str, connectors: Iterable[Mapping[str, str]], *,
                 heap: str = "512m", worker_overrides: Mapping[str, str] | None = None) -> None:
        super().__init__(workdir, bootstrap, connectors, heap=heap)
        self.worker_overrides = dict(worker_overrides or {})

    def _worker_properties(self, plugin_path: Path) -> str:
        base = super()._worker_properties(ensure_jdbc_sink_plugin())
        return base + "".join(f"{k}={v}\n" for k, v in self.worker_overrides.items())
