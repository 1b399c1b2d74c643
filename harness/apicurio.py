"""A real schema registry in the development stack: Apicurio Registry, run from what Maven Central serves.

* :func:`ensure_registry_app` resolves ``io.apicurio:apicurio-registry-app:<version>:tar.gz:all`` (a ready
  Quarkus application) with Maven once and unpacks it under ``deploy/apicurio/app-<version>/``. Apicurio 3.3
  needs Java 21+: :func:`registry_java` picks the newest JDK it finds (``KDCDC_APICURIO_JAVA``, ``JAVA_HOME``,
  ``java`` on the path, ``/usr/lib/jvm/*``); with only Java 17, 3.0.9 is used instead.
* :class:`ApicurioRegistry` runs it on free loopback ports, in-memory storage (nothing survives a stop),
  logs to a file, ready when ``/health/ready`` says so (3.3: on the management port). ``ccompat_url`` is the
  Confluent-compatible API (kingdee-cdc's ``schema_registry.url``), ``v2_url`` the native v2 API (the
  Kafka Connect converter's ``apicurio.registry.url``).
* :func:`ensure_converter_plugin` resolves Apicurio's Kafka Connect converter
  (``io.apicurio:apicurio-registry-utils-converter`` and its runtime dependencies, Kafka's own jars left to
  the worker) into ``deploy/debezium/plugins/apicurio-converter`` — the plugin path the harness's
  :class:`~harness.debezium.KafkaConnect` loads, so any connector there can name the converter.
* :func:`avro_connector_config` turns :func:`~harness.debezium.connector_config`'s JSON configuration into
  one that writes Avro through the registry in the Confluent wire format (magic byte 0, 4-byte id, Avro
  body; ids are Apicurio *content* ids, which the ccompat API serves as Confluent schema ids).

Apicurio's parent POMs name repositories other than Maven Central: every Maven call here uses
``deploy/apicurio/settings.xml``, which mirrors them all to Central.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx

from connector.errors import DevStackError
from harness.debezium import PLUGIN_DIR
from harness.devstack import REPO_ROOT, JavaService, _stop_process, _tail, free_port

APICURIO_DIR: Final = REPO_ROOT / "deploy" / "apicurio"
APICURIO_POM: Final = APICURIO_DIR / "pom.xml"
APICURIO_SETTINGS: Final = APICURIO_DIR / "settings.xml"
CONVERTER_PLUGIN_DIR: Final = PLUGIN_DIR / "apicurio-converter"

#: The registry server: 3.3.x on Java 21+, else the last release that still runs on Java 17.
APP_VERSION: Final = "3.3.3"
APP_VERSION_JAVA17: Final = "3.0.9"
#: The converter: Apicurio 2.6's, which speaks the v2 API the 3.x server still serves.
CONVERTER_CLASS: Final = "io.apicurio.registry.utils.converter.AvroConverter"
_DEPENDENCY_PLUGIN_2: Final = "org.apache.maven.plugins:maven-dependency-plugin:2.10"


# --------------------------------------------------------------------------- Java
@dataclass(frozen=True, slots=True)
class Java:
    path: str
    major: int
    version: str  # the first line of ``java -version``


def _java_version(java: str) -> Java | None:
    try:
        res = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = (res.stderr or res.stdout).splitlines()[:1]
    m = re.search(r'version "(\d+)(?:\.(\d+))?', first[0]) if first else None
    if res.returncode != 0 or m is None:
        return None
    major = int(m.group(1))
    if major == 1 and m.group(2):  # "1.8.0_…"
        major = int(m.group(2))
    return Java(java, major, first[0].strip())


def registry_java() -> Java:
    """The JVM for the registry: ``KDCDC_APICURIO_JAVA`` if set, else the newest of ``$JAVA_HOME``,
    ``java`` on the path and ``/usr/lib/jvm/*`` (Apicurio 3.3 needs 21+; 17 runs the 3.0 fallback)."""
    wanted = os.environ.get("KDCDC_APICURIO_JAVA")
    if wanted:
        found = _java_version(wanted)
        if found is None:
            raise DevStackError(f"KDCDC_APICURIO_JAVA={wanted} is not a runnable java")
        return found
    candidates: list[str] = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    on_path = shutil.which("java")
    if on_path:
        candidates.append(on_path)
    candidates += sorted(str(p) for p in Path("/usr/lib/jvm").glob("*/bin/java"))
    seen: set[str] = set()
    javas = []
    for c in candidates:
        real = os.path.realpath(c)
        if real in seen or not os.access(real, os.X_OK):
            continue
        seen.add(real)
        j = _java_version(c)
        if j is not None:
            javas.append(j)
    if not javas or max(j.major for j in javas) < 17:
        raise DevStackError("Java 17+ (better 21+) is needed to run Apicurio Registry "
                            "(apt-get install openjdk-21-jre-headless, or set KDCDC_APICURIO_JAVA)")
    return max(javas, key=lambda j: j.major)


def app_version_for(java: Java) -> str:
    return APP_VERSION if java.major >= 21 else APP_VERSION_JAVA17


# --------------------------------------------------------------------------- Maven
def _stale(marker: Path) -> bool:
    """A resolution is stale when missing or older than the POM or the settings file."""
    if not marker.exists():
        return True
    made = marker.stat().st_mtime
    return any(p.exists() and p.stat().st_mtime > made for p in (APICURIO_POM, APICURIO_SETTINGS))


def _mvn(what: str, *args: str) -> None:
    if shutil.which("mvn") is None:
        raise DevStackError(f"Maven (mvn) is needed once to fetch {what} from Maven Central: apt-get install maven")
    cmd = ["mvn", "-q", "-B", "-s", str(APICURIO_SETTINGS), "-f", str(APICURIO_POM), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise DevStackError(f"Maven could not resolve {what} (exit {res.returncode}):\n"
                            f"{res.stdout[-2000:]}\n{res.stderr[-2000:]}")


def app_dir(version: str) -> Path:
    return APICURIO_DIR / f"app-{version}"


def ensure_registry_app(version: str = APP_VERSION) -> Path:
    """The unpacked Apicurio Registry application (``quarkus-run.jar`` inside), resolved with Maven once;
    ``.resolved`` in it marks a complete unpack (a changed POM or settings file makes it stale)."""
    target = app_dir(version)
    marker = target / ".resolved"
    if not _stale(marker):
        return target
    print(f"kingdee-cdc: resolving Apicurio Registry {version} from Maven Central into {target} …",
          file=sys.stderr)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    # maven-dependency-plugin 3.x reads the archive's POM before unpacking it, and 3.0.9's parent POM
    # (io.apicurio:apicurio-registry:pom:3.0.9) is not on Central; 2.10's unpack needs only the archive.
    _mvn(f"Apicurio Registry {version}", f"{_DEPENDENCY_PLUGIN_2}:unpack", f"-Dapicurio.app.version={version}",
         f"-Dapp.dir={target}")
    runner_jar(target)  # raises if the archive held no application
    marker.touch()
    return target


def runner_jar(app: Path) -> Path:
    """The application's launcher: ``quarkus-run.jar`` (fast-jar layout, as 3.3 ships) or ``*-runner.jar``
    (legacy layout, as 3.0.9 ships)."""
    for jar in (app / "quarkus-run.jar", *sorted(app.glob("*-runner.jar"))):
        if jar.exists():
            return jar
    raise DevStackError(f"no quarkus-run.jar or *-runner.jar in {app}: not an unpacked Apicurio Registry")


def ensure_converter_plugin() -> Path:
    """The Kafka Connect plugin directory with Apicurio's AvroConverter, resolved with Maven once."""
    marker = CONVERTER_PLUGIN_DIR / ".resolved"
    if not _stale(marker):
        return CONVERTER_PLUGIN_DIR
    print(f"kingdee-cdc: resolving the Apicurio Kafka Connect converter from Maven Central into "
          f"{CONVERTER_PLUGIN_DIR} …", file=sys.stderr)
    CONVERTER_PLUGIN_DIR.mkdir(parents=True, exist_ok=True)
    for old in CONVERTER_PLUGIN_DIR.glob("*.jar"):  # no other version left on the plugin's class path
        old.unlink()
    _mvn("the Apicurio converter", "dependency:copy-dependencies", "-DincludeScope=runtime",
         f"-DoutputDirectory={CONVERTER_PLUGIN_DIR}")
    if not any(CONVERTER_PLUGIN_DIR.glob("apicurio-registry-utils-converter-*.jar")):
        raise DevStackError(f"Maven left no converter jar in {CONVERTER_PLUGIN_DIR}")
    marker.touch()
    return CONVERTER_PLUGIN_DIR


def ensure_apicurio() -> tuple[Path, Path]:
    """Everything Apicurio the stack needs (``make setup``): the registry for this machine's Java and the
    converter plugin."""
    return ensure_registry_app(app_version_for(registry_java())), ensure_converter_plugin()


# --------------------------------------------------------------------------- the registry
class ApicurioRegistry(JavaService):
    """Apicurio Registry (in-memory storage) on 127.0.0.1: an HTTP port for the APIs, a management port for
    health. A context manager like the harness's other services; ``stop()`` is safe to call twice."""

    def __init__(self, workdir: Path, *, heap: str = "256m", java: Java | None = None,
                 version: str | None = None) -> None:
        self.workdir = Path(workdir)
        self.heap = heap
        self.java = java
        self.version = version
        self.port = free_port()
        self.management_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_after_s: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ccompat_url(self) -> str:
        """The Confluent-compatible API: ``schema_registry.url`` for kingdee-cdc and confluent-kafka."""
        return f"{self.url}/apis/ccompat/v7"

    @property
    def v2_url(self) -> str:
        """Apicurio's v2 API, which the 2.6 Kafka Connect converter talks to."""
        return f"{self.url}/apis/registry/v2"

    @property
    def v3_url(self) -> str:
        return f"{self.url}/apis/registry/v3"

    @property
    def health_urls(self) -> tuple[str, str]:
        """Readiness: on the management port (3.3), or on the HTTP port (3.0.9 has no management interface)."""
        return (f"http://127.0.0.1:{self.management_port}/health/ready", f"{self.url}/health/ready")

    @property
    def log_path(self) -> Path:
        return self.workdir / "apicurio.log"

    def command(self, app: Path, java: Java) -> list[str]:
        jvm = [java.path, f"-Xmx{self.heap}", "-Xms64m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
               "-Djava.awt.headless=true"]
        props = {
            "quarkus.http.host": "127.0.0.1", "quarkus.http.port": self.port,
            "quarkus.management.host": "127.0.0.1", "quarkus.management.port": self.management_port,
            "quarkus.log.console.color": "false",
        }
        return [*jvm, *(f"-D{k}={v}" for k, v in props.items()), "-jar", str(runner_jar(app))]

    def start(self, timeout: float = 120.0) -> ApicurioRegistry:
        java = self.java or registry_java()
        self.java = java
        if java.major < 17:
            raise DevStackError(f"Apicurio Registry needs Java 17+ (21+ for {APP_VERSION}); found {java.version}")
        version = self.version or app_version_for(java)
        self.version = version
        app = ensure_registry_app(version)
        self.workdir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(app, java), cwd=self.workdir, stdout=logf,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        logf.close()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self.ready_after_s = time.monotonic() - started
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise DevStackError(f"Apicurio Registry exited with {self.proc.returncode}:\n"
                                        f"{_tail(self.log_path, 40)}")
                for url in self.health_urls:
                    try:
                        if http.get(url).status_code == 200:
                            return
                    except httpx.HTTPError:
                        pass
                time.sleep(0.1)
        raise DevStackError(f"Apicurio Registry not ready after {timeout:.0f}s:\n{_tail(self.log_path, 40)}")

    def stop(self, timeout: float = 30.0) -> None:
        _stop_process(self.proc, None, signal.SIGTERM, timeout)
        self.proc = None

    def info(self) -> dict[str, str]:
        """``/system/info`` of the v2 API: the server's name and version."""
        r = httpx.get(f"{self.v2_url}/system/info", timeout=5)
        r.raise_for_status()
        return dict(r.json())

    def rss_mb(self) -> float | None:
        """Resident memory of the registry process (Linux), in MiB."""
        if self.proc is None:
            return None
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None


# --------------------------------------------------------------------------- Debezium with Avro
def converter_settings(v2_url: str) -> dict[str, str]:
    """The Apicurio AvroConverter's settings (without the ``key.converter.`` / ``value.converter.`` prefix):
    schemas registered under ``<topic>-key`` / ``<topic>-value``, the Confluent wire format with the
    content id (what the ccompat API calls a schema id), no Apicurio headers."""
    return {
        "apicurio.registry.url": v2_url,
        "apicurio.registry.auto-register": "true",
        "apicurio.registry.as-confluent": "true",
        "apicurio.registry.use-id": "contentId",
        "apicurio.registry.headers.enabled": "false",
    }


def avro_connector_config(config: Mapping[str, str], v2_url: str, *,
                          decimal_handling_mode: str = "precise") -> dict[str, str]:
    """``connector_config(...)`` with Avro through Apicurio for keys and values (per connector: the worker's
    JSON converters stay the default for other connectors) and the given ``decimal.handling.mode``."""
    out = dict(config)
    for side in ("key", "value"):
        out[f"{side}.converter"] = CONVERTER_CLASS
        out |= {f"{side}.converter.{k}": v for k, v in converter_settings(v2_url).items()}
    out["decimal.handling.mode"] = decimal_handling_mode
    return out
