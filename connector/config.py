"""One validated settings object: a YAML file plus ``KDCDC_``-prefixed environment overrides.

Precedence (highest first): environment variables (``KDCDC_KAFKA__BOOTSTRAP_SERVERS``; ``__`` separates
nesting levels), the YAML file (``--config`` or ``KDCDC_CONFIG``), defaults. Unknown keys are rejected
with their name. Any secret may be given inline, from the environment, or as ``file:/path`` (a mounted
Kubernetes/Docker secret); secrets are ``SecretStr`` and print as ``**********``.

=====================================  ===============  ==================================================
key                                    default          meaning
=====================================  ===============  ==================================================
``kafka.bootstrap_servers``            ``127.0.0.1:9092`` broker list
``kafka.group_id``                     ``kingdee-cdc``  consumer group of the pipeline
``kafka.topics``                       ``[]``           change-event topics to consume
``kafka.client``                       ``{}``           extra librdkafka properties (TLS, SASL …), passed through
``kafka.dead_letter_topic``            ``kingdee-cdc.dlq`` dead-letter topic
``schema_registry.url``                none             Confluent-compatible registry (``mock://x`` in tests)
``schema_registry.basic_auth``         none             ``user:password`` (secret)
``journal.dsn``                        none             PostgreSQL DSN (secret); none = embedded server
``journal.schema``                     ``kdcdc``        schema holding the journal tables
``kingdee.server_url``                 none             ``https://host/k3cloud/``
``kingdee.acct_id``/``username``       none             data centre id and integration user
``kingdee.app_id``/``app_secret``      none             third-party app registration (secret)
``kingdee.lcid``                       2052             language
``kingdee.verify_tls``                 true             never turn off in production
``kingdee.lease_s``                    300              a poster's claim on vouchers; a dead poster's are taken over
                                                        after lease + grace (must exceed ``kingdee.timeout_s``)
``kingdee.unknown_outcome_grace_s``    300              wait before looking up a voucher whose save timed out: longer
                                                        than Kingdee may still commit a request (> ``timeout_s``)
``kingdee.duplicate_scan_every_s``     600              scan Kingdee for voucher keys held twice (0: off)
``kingdee.delete_duplicates``          true             delete unaudited extra copies (false: only flag them)
``mapping.rules_dir``                  ``rules``        directory of YAML mapping rules
``feedback.topic_prefix``              ``kingdee-cdc.feedback``  feedback topics: ``<prefix>.<source system>``
``feedback.format``                    ``json``         or ``avro`` (through the schema registry)
``feedback.journaled``                 ``[]``           source systems told JOURNALED per new voucher (``*``: all)
``mapping.chart_source``               ``file``         chart of accounts from ledger.yaml, or ``kingdee`` (BD_Account)
``errors.tolerance``                   ``all``          ``all``: dead-letter and continue; ``none``: stop
``transactions.group``                 true             map a header with its lines of one source transaction
``transactions.hold_s``                30               an incomplete transaction is then mapped event by event
``transactions.max_held``              100000           records held for transactions at most
``metrics.host``/``metrics.port``      ``127.0.0.1``/9108  ops server bind address (/metrics, /healthz, /readyz)
``metrics.token``                      none             bearer token for /metrics (the probes stay open)
``metrics.request_timeout_s``          5                ops server socket timeout (idle or slow clients are cut)
``metrics.ready_cache_s``              2                /readyz reuses its dependency checks this long
``service.startup_timeout_s``          60               wait at start for journal and Kafka, then exit 3
``service.shutdown_grace_s``           25               SIGTERM → exit within this, whatever still blocks
``service.outage_log_every_s``         30               a failing dependency is logged once per interval
``console.enabled``                    false            serve the operator console from ``run`` too
``console.host``/``console.port``      ``127.0.0.1``/9109  the console's own address (``kingdee-cdc console``)
``console.users``                      ``[]``           ``{name, password and/or token (secrets), role: viewer|admin}``
``console.language``/``timezone``      ``zh``/``Asia/Shanghai``  default labels; the zone of "today" and chart buckets
``console.session_secret``             random           signs session cookies (secret; set it for replicas)
``console.thresholds.*``               see operations   numbers shown in red on the status page
=====================================  ===============  ==================================================
"""

from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from connector.errors import ConfigError

_SECRET_KEY_WORDS = ("password", "secret", "token", "key", "credentials", "dsn", "auth", "sasl.oauthbearer.config")


def _is_secret_key(key: str) -> bool:
    return any(w in key.lower() for w in _SECRET_KEY_WORDS)


def _resolve_secret(v: Any) -> Any:
    """``file:/path`` → the file's content (trailing newline stripped)."""
    raw = v.get_secret_value() if isinstance(v, SecretStr) else v
    if isinstance(raw, str) and raw.startswith("file:"):
        path = Path(raw[5:])
        try:
            return SecretStr(path.read_text(encoding="utf-8").rstrip("\n"))
        except OSError as e:
            raise ValueError(f"cannot read secret file {path}: {e.strerror}") from None
    return v


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#: ``kafka.client`` properties that producers share with the consumer (connection, TLS, SASL, logging)
_SHARED_PREFIXES: Final = ("security.", "sasl.", "ssl.", "ssl_", "client.", "socket.", "broker.", "reconnect.",
                           "metadata.", "topic.metadata.", "api.version", "connections.", "log", "debug",
                           "statistics.", "retry.", "enable.ssl.", "resolve.", "allow.auto.create.topics")


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "kingdee-cdc"
    topics: list[str] = Field(default_factory=list)
    client: dict[str, Annotated[str | SecretStr, Field(union_mode="left_to_right")]] = Field(default_factory=dict)
    #: properties for the consumer only / the producers only (dead letters, feedback, requeue)
    consumer: dict[str, Annotated[str | SecretStr, Field(union_mode="left_to_right")]] = Field(default_factory=dict)
    producer: dict[str, Annotated[str | SecretStr, Field(union_mode="left_to_right")]] = Field(default_factory=dict)
    dead_letter_topic: str = "kingdee-cdc.dlq"
    start_from: Literal["earliest", "latest"] = "earliest"
    batch_size: int = Field(2000, ge=1, le=50_000)

    @field_validator("client", "consumer", "producer", mode="before")
    @classmethod
    def _client_secrets(cls, v: Any) -> Any:
        """librdkafka properties that hold secrets (``sasl.password`` …) become ``SecretStr``."""
        if not isinstance(v, dict):
            return v
        return {k: _resolve_secret(SecretStr(str(x))) if _is_secret_key(str(k)) else str(x) for k, x in v.items()}

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, v: str) -> str:
        for hp in v.split(","):
            host, _, port = hp.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port…], got {v!r}")
        return v

    @staticmethod
    def _resolved(props: Mapping[str, str | SecretStr]) -> dict[str, str]:
        out = {}
        for k, v in props.items():
            resolved = _resolve_secret(v)
            out[k] = resolved.get_secret_value() if isinstance(resolved, SecretStr) else str(resolved)
        return out

    def librdkafka(self) -> dict[str, str]:
        """Client properties for confluent-kafka (secrets resolved, never logged): ``client`` as given."""
        return {"bootstrap.servers": self.bootstrap_servers, **self._resolved(self.client)}

    def consumer_conf(self) -> dict[str, str]:
        """The consumer's properties: ``client`` plus ``consumer``."""
        return {**self.librdkafka(), **self._resolved(self.consumer)}

    def producer_conf(self) -> dict[str, str]:
        """A producer's properties: the connection and security part of ``client`` (consumer-only properties such
        as ``session.timeout.ms`` would make librdkafka warn on every start) plus ``producer``."""
        common = {k: v for k, v in self._resolved(self.client).items() if k.startswith(_SHARED_PREFIXES)}
        return {"bootstrap.servers": self.bootstrap_servers, **common, **self._resolved(self.producer)}


class RegistrySettings(_Section):
    url: str | None = None
    basic_auth: SecretStr | None = None
    #: TLS: the CA bundle that signs the registry's certificate, and a client certificate + key when the
    #: registry wants mutual TLS (the key may be encrypted: ssl_key_password)
    ssl_ca_location: Path | None = None
    ssl_certificate_location: Path | None = None
    ssl_key_location: Path | None = None
    ssl_key_password: SecretStr | None = None

    _secret = field_validator("basic_auth", "ssl_key_password", mode="before")(_resolve_secret)

    def client_conf(self) -> dict[str, str]:
        """Configuration of confluent-kafka's ``SchemaRegistryClient`` (secrets resolved; never logged)."""
        if not self.url:
            return {}
        conf = {"url": self.url}
        if self.basic_auth is not None:
            conf["basic.auth.user.info"] = self.basic_auth.get_secret_value()
        for key, value in (("ssl.ca.location", self.ssl_ca_location),
                           ("ssl.certificate.location", self.ssl_certificate_location),
                           ("ssl.key.location", self.ssl_key_location)):
            if value is not None:
                conf[key] = str(value)
        if self.ssl_key_password is not None:
            conf["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        return conf


class JournalSettings(_Section):
    dsn: SecretStr | None = None
    schema_name: str = Field("kdcdc", alias="schema", pattern=r"^[a-z_][a-z0-9_]{0,62}$")

    _secret = field_validator("dsn", mode="before")(_resolve_secret)


class KingdeeSettings(_Section):
    server_url: str | None = None
    acct_id: str | None = None
    username: str | None = None
    app_id: str | None = None
    app_secret: SecretStr | None = None
    password: SecretStr | None = None
    lcid: int = 2052
    verify_tls: bool = True
    auth: Literal["signed", "login_by_sign", "login_by_app_secret", "password"] = "signed"
    timeout_s: float = Field(30.0, gt=0)
    max_concurrency: int = Field(4, ge=1, le=64)
    rate_limit_per_s: float = Field(50.0, gt=0)
    #: custom GL_VOUCHER header field holding the voucher key (e.g. F_KDCDC_KEY); none = explanation marker only
    key_field: str | None = None
    batch_size: int = Field(100, ge=1, le=1000)
    #: seconds a poster holds claimed vouchers: it starts no Kingdee call for them after this, and vouchers left
    #: POSTING by a poster that died are taken over (and looked up first) after lease_s + unknown_outcome_grace_s
    lease_s: float = Field(300.0, gt=0)
    #: seconds to wait after a save's outcome became unknown (timeout, lost answer, HTTP 5xx) before looking the
    #: vouchers up by key: Kingdee may still be working on the request and commit it later. Must be longer than
    #: the longest time the Kingdee server keeps processing a request (IIS executionTimeout of the K/3 Cloud
    #: site, a gateway's timeout, database lock waits) — and so longer than kingdee.timeout_s
    unknown_outcome_grace_s: float = Field(300.0, gt=0)
    #: seconds between scans for voucher keys Kingdee holds more than once (0: no periodic scan)
    duplicate_scan_every_s: float = Field(600.0, ge=0)
    #: delete unaudited extra copies found by the scan (keeping the journal's); false: flag them only
    delete_duplicates: bool = True

    _secret = field_validator("app_secret", "password", mode="before")(_resolve_secret)

    @model_validator(mode="after")
    def _poster_timing(self) -> KingdeeSettings:
        if self.unknown_outcome_grace_s <= self.timeout_s:
            raise ValueError(f"unknown_outcome_grace_s ({self.unknown_outcome_grace_s:g}) must be longer than "
                             f"timeout_s ({self.timeout_s:g}) — and longer than the Kingdee server may keep working "
                             "on a request: a voucher looked up earlier may still be saved, and sent twice")
        if self.lease_s <= self.timeout_s:
            raise ValueError(f"lease_s ({self.lease_s:g}) must be longer than timeout_s ({self.timeout_s:g}): a "
                             "claim must outlive at least one Kingdee call")
        return self

    @field_validator("server_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("https://", "http://")):
            raise ValueError(f"expected an http(s) URL such as https://host/k3cloud/, got {v!r}")
        return v


class MappingSettings(_Section):
    rules_dir: Path = Path("rules")
    #: ``file``: the chart of accounts in ledger.yaml; ``kingdee``: fetched from BD_Account at start, with
    #: required dimensions and currency rules still taken from ledger.yaml (drift is logged)
    chart_source: Literal["file", "kingdee"] = "file"


class ErrorSettings(_Section):
    tolerance: Literal["all", "none"] = "all"


class TransactionSettings(_Section):
    """Source transactions (rules with ``lines:``): hold a transaction's events until all are consumed."""

    group: bool = True
    hold_s: float = Field(30.0, gt=0, le=3600)
    max_held: int = Field(100_000, ge=100)


class SummarySettings(_Section):
    """Summary vouchers (rules with ``summarize:``): ``run`` closes the summaries that are due."""

    #: how often ``run`` looks for summaries due to close; 0: never in this process (another instance, or
    #: ``kingdee-cdc summaries close``, closes them)
    close_every_s: float = Field(5.0, ge=0, le=3600)


class FeedbackSettings(_Section):
    #: feedback for source system S goes to ``<topic_prefix>.S``
    topic_prefix: str = Field("kingdee-cdc.feedback", pattern=r"^[A-Za-z0-9._\-]{1,200}$")
    #: ``avro`` needs schema_registry.url (schema schemas/feedback.event.avsc, subject <topic>-value)
    format: Literal["json", "avro"] = "json"
    #: source systems told JOURNALED for each new voucher (``["*"]``: every system). Opt-in (decision 0011):
    #: POSTED, REJECTED, REJECTED_BY_KINGDEE, REVERSED and DEAD_LETTERED are always sent.
    journaled: list[str] = Field(default_factory=list)


class MetricsSettings(_Section):
    #: the address the ops server (/metrics, /healthz, /readyz) binds: 127.0.0.1 keeps it on the host, 0.0.0.0
    #: (the image) makes it reachable for probes and scrapers
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)
    #: required as ``Authorization: Bearer …`` for /metrics (and any endpoint that is not a probe); the probes
    #: /healthz and /readyz stay open, so Kubernetes can call them
    token: SecretStr | None = None
    #: a connection that has not sent its request (or not read the answer) within this is closed
    request_timeout_s: float = Field(5.0, gt=0, le=300)
    #: /readyz reuses its dependency checks for this long (probes and scrapers do not each cause a check)
    ready_cache_s: float = Field(2.0, ge=0, le=60)

    _secret = field_validator("token", mode="before")(_resolve_secret)


class ServiceSettings(_Section):
    """The process: start-up, shutdown and how outages are reported (``run``, ``post``)."""

    #: at start, wait this long for the journal and Kafka to answer (saying why once per
    #: ``outage_log_every_s``), then exit with status 3 and the reason; 0: give up at the first failure
    startup_timeout_s: float = Field(60.0, ge=0, le=3600)
    #: after SIGTERM/SIGINT the process exits within this long, whatever still blocks (keep it below the
    #: orchestrator's kill deadline: Kubernetes' terminationGracePeriodSeconds, the chart's is 60)
    shutdown_grace_s: float = Field(25.0, gt=0, le=600)
    #: a dependency (journal, Kafka, Kingdee, schema registry) that keeps failing is logged once per this interval
    outage_log_every_s: float = Field(30.0, gt=0, le=3600)


class ConsoleUser(_Section):
    """A user of the operator console: a password (login form, HTTP Basic) and/or a token (login form, Bearer)."""

    name: str = Field(pattern=r"^[A-Za-z0-9._@\-]{1,64}$")
    password: SecretStr | None = None
    token: SecretStr | None = None
    #: ``viewer`` reads every page; ``admin`` may also requeue dead letters
    role: Literal["viewer", "admin"] = "viewer"

    _secret = field_validator("password", "token", mode="before")(_resolve_secret)

    @model_validator(mode="after")
    def _credentials(self) -> ConsoleUser:
        if self.password is None and self.token is None:
            raise ValueError(f"console user {self.name!r} needs a password or a token")
        if self.password is not None and len(self.password.get_secret_value()) < 8:
            raise ValueError(f"console user {self.name!r}: the password must have at least 8 characters")
        if self.token is not None and len(self.token.get_secret_value()) < 16:
            raise ValueError(f"console user {self.name!r}: the token must have at least 16 characters")
        return self

    def password_value(self) -> str | None:
        return self.password.get_secret_value() if self.password is not None else None

    def token_value(self) -> str | None:
        return self.token.get_secret_value() if self.token is not None else None


class ConsoleThresholds(_Section):
    """When the console's status page shows a number in red (null: never)."""

    lag_records: int | None = Field(10_000, ge=1)  #: Kafka records not yet consumed, per source system
    silence_s: float | None = Field(None, gt=0)  #: no event from a source system for this long
    rejected_today: int | None = Field(1, ge=1)  #: changes rejected by the rules since midnight
    dead_lettered_today: int | None = Field(1, ge=1)  #: undecodable records since midnight
    oldest_unposted_s: float | None = Field(900.0, gt=0)  #: a voucher waiting to be posted this long
    rejected_by_kingdee: int | None = Field(1, ge=1)  #: vouchers Kingdee refused
    needs_attention: int | None = Field(1, ge=1)  #: vouchers Kingdee holds more than once
    dead_letters_new: int | None = Field(None, ge=1)  #: dead letters nobody requeued or resolved
    feedback_unsent_s: float | None = Field(300.0, gt=0)  #: the oldest unsent feedback event this old
    reconciliation_flagged: int | None = Field(1, ge=1)  #: flagged lines in a book's latest reconciliation


class ConsoleSettings(_Section):
    """The operator console (``kingdee-cdc console``, or inside ``kingdee-cdc run`` when ``enabled``)."""

    enabled: bool = False  #: serve it from ``kingdee-cdc run`` too
    host: str = "127.0.0.1"
    port: int = Field(9109, ge=0, le=65535)
    language: Literal["zh", "en"] = "zh"  #: labels until a user picks the other language
    #: "today" on the status page and the triage charts' hours and days are this zone's
    timezone: str = "Asia/Shanghai"
    users: list[ConsoleUser] = Field(default_factory=list)
    #: signs the session cookies; none: a random one per process (sign-ins then end with a restart, and replicas
    #: behind one address need the same secret)
    session_secret: SecretStr | None = None
    session_hours: float = Field(12.0, gt=0, le=24 * 30)
    #: mark the session cookie Secure (set when the console is reached over HTTPS, e.g. behind a proxy)
    secure_cookies: bool = False
    thresholds: ConsoleThresholds = Field(default_factory=ConsoleThresholds)  # type: ignore[arg-type]

    _secret = field_validator("session_secret", mode="before")(_resolve_secret)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (an IANA name such as Asia/Shanghai or UTC)") from None
        return v

    @model_validator(mode="after")
    def _users(self) -> ConsoleSettings:
        names = [u.name for u in self.users]
        doubles = sorted({n for n in names if names.count(n) > 1})
        if doubles:
            raise ValueError(f"console users must have distinct names: {', '.join(doubles)} given twice")
        if self.enabled and not self.users:
            raise ValueError("console.enabled is true but console.users is empty: the console never serves "
                             "anonymously (add a user with a password or a token)")
        if self.session_secret is not None and len(self.session_secret.get_secret_value()) < 32:
            raise ValueError("console.session_secret must have at least 32 characters")
        return self


class Settings(BaseSettings):
    """The whole configuration. Build it with ``load_settings``."""

    model_config = SettingsConfigDict(env_prefix="KDCDC_", env_nested_delimiter="__", extra="forbid",
                                      frozen=True)

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)  # type: ignore[arg-type]
    schema_registry: RegistrySettings = Field(default_factory=RegistrySettings)
    journal: JournalSettings = Field(default_factory=JournalSettings)  # type: ignore[arg-type]
    kingdee: KingdeeSettings = Field(default_factory=KingdeeSettings)  # type: ignore[arg-type]
    mapping: MappingSettings = Field(default_factory=MappingSettings)
    errors: ErrorSettings = Field(default_factory=ErrorSettings)
    transactions: TransactionSettings = Field(default_factory=TransactionSettings)  # type: ignore[arg-type]
    summaries: SummarySettings = Field(default_factory=SummarySettings)  # type: ignore[arg-type]
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)  # type: ignore[arg-type]
    service: ServiceSettings = Field(default_factory=ServiceSettings)  # type: ignore[arg-type]
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)  # type: ignore[arg-type]
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)  # type: ignore[arg-type]
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: ``production`` refuses to start with plain-text connections to PostgreSQL, Kingdee or the registry
    #: (``development`` only warns)
    profile: Literal["development", "production"] = "development"

    @model_validator(mode="after")
    def _production_needs_tls(self) -> Settings:
        if self.profile == "production":
            problems = transport_warnings(self)
            if problems:
                raise ValueError("profile production refuses plain-text connections: " + "; ".join(problems))
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # env beats the file (init kwargs carry the YAML content).
        return (env_settings, init_settings)

    def redacted(self) -> dict[str, Any]:
        """The effective configuration with every secret replaced (``config show``): secret fields print as
        ``**********``, and a password inside any URL (``http://user:…@registry``) as ``***``."""
        from connector.logs import scrub

        def clean(v: Any) -> Any:
            if isinstance(v, str):
                return scrub(v)
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v
        data: dict[str, Any] = clean(self.model_dump(mode="json", by_alias=True))  # SecretStr dumps as "*****"
        return data


def transport_warnings(settings: Settings) -> list[str]:
    """Connections that would carry journal data, credentials or vouchers in plain text."""
    from urllib.parse import parse_qs, urlparse

    out: list[str] = []
    if settings.journal.dsn is not None:
        dsn = settings.journal.dsn.get_secret_value()
        mode: str | None = None
        if "://" in dsn:
            modes = parse_qs(urlparse(dsn).query).get("sslmode")
            mode = modes[0] if modes else None
        else:
            mode = next((part.split("=", 1)[1] for part in dsn.split() if part.startswith("sslmode=")), None)
        if (mode or "prefer") in ("disable", "allow", "prefer"):
            out.append(f"journal.dsn has sslmode={mode or 'prefer (the default)'}: use require, verify-ca or "
                       "verify-full")
    if settings.kingdee.server_url and settings.kingdee.server_url.startswith("http://"):
        out.append("kingdee.server_url is plain http://: vouchers and sessions travel unencrypted")
    if not settings.kingdee.verify_tls:
        out.append("kingdee.verify_tls is false: the Kingdee server's certificate is not checked")
    if settings.schema_registry.url and settings.schema_registry.url.startswith("http://"):
        out.append("schema_registry.url is plain http://")
    return out


def _masked(value: Any) -> Any:
    """``value`` with the values of secret-looking keys masked at any depth (an invalid section is echoed whole, e.g.
    a console user with its password)."""
    if isinstance(value, Mapping):
        return {k: "**********" if _is_secret_key(str(k)) and v is not None else _masked(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_masked(v) for v in value]
    return value


def _format_error(e: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"])
        value = err.get("input")
        shown = "**********" if _is_secret_key(key) else repr(_masked(value))
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (check the spelling; see docs/operations.md for the list)")
        else:
            lines.append(f"  {key}: {err['msg']} (got {shown})")
    return "\n".join(lines)


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Load the YAML file (``path`` or ``$KDCDC_CONFIG``), apply env overrides, validate.

    Raises ``ConfigError`` whose message names every bad key, its value and what was expected.
    """
    path = path or os.environ.get("KDCDC_CONFIG")
    data: dict[str, Any] = {}
    source = "defaults and environment"
    if path:
        p = Path(path)
        source = str(p)
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"cannot read configuration file {p}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"configuration file {p} is not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"configuration file {p} must contain a mapping at the top level")
        data = loaded or {}
    data.update(overrides)
    try:
        settings = Settings(**data)
    except ValidationError as e:
        raise ConfigError(_format_error(e, source)) from None
    from connector.logs import register_secrets, secret_values

    register_secrets(secret_values(settings))  # every later output path scrubs them, tracebacks included
    return settings
