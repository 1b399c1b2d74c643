"""`kingdee-cdc events decode|produce`: look at and publish Debezium change events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from connector.cli._app import ConfigOpt, events_app, fail as _fail

def records_in(path: Path) -> list[bytes]:
    """The records of an event file: one Avro wire-format record, one JSON document, or NDJSON lines."""
    raw = path.read_bytes()
    if raw[:1] == b"\x00":
        return [raw]  # one Avro wire-format record
    try:
        json.loads(raw)
        return [raw]
    except ValueError:
        pass
    lines = [ln for ln in raw.splitlines() if ln.strip()]
    return lines or [raw]


@events_app.command("decode")
def events_decode(
    files: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, readable=True,
                                                help="Files holding one event (JSON or Avro wire format) "
                                                     "or one JSON event per line")],
    schema: Annotated[Optional[Path], typer.Option("--schema", exists=True, dir_okay=False,
                                                   help="Avro writer schema (.avsc) for Avro wire-format "
                                                        "files, whatever schema id they carry")] = None,
) -> None:
    """Print one normalised JSON line per event (decimals as strings, times ISO-8601 UTC)."""
    from connector.events import Decoder, FixedSchemas, KafkaCoordinates, event_to_json

    schemas = FixedSchemas(json.loads(schema.read_text())) if schema else None
    decoder = Decoder(schemas)
    failures = 0
    for path in files:
        for n, rec in enumerate(records_in(path)):
            result = decoder.decode(rec, kafka=KafkaCoordinates(topic=str(path), partition=0, offset=n))
            out = event_to_json(result)
            failures += out["kind"] == "DecodeFailure"
            typer.echo(json.dumps(out, ensure_ascii=False))
    if failures:
        raise typer.Exit(1)


@events_app.command("produce")
def events_produce(
    files: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, readable=True,
                                                help="Files holding one event (JSON or Avro wire format) "
                                                     "or one JSON event per line")],
    topic: Annotated[str, typer.Option("--topic", help="e.g. oa.public.expense_claim")],
    key: Annotated[Optional[str], typer.Option("--key", help="record key (JSON), default: the event's "
                                                              "primary key as {\"id\": …} when it has one")] = None,
    config: ConfigOpt = None,
) -> None:
    """Publish event files to a topic as they are (for trying rules against a dev stack)."""
    from confluent_kafka import Producer

    from connector.config import load_settings

    settings = load_settings(config)
    producer = Producer({"log_level": "3", **settings.kafka.producer_conf(), "enable.idempotence": "true"})
    sent = 0
    for path in files:
        for rec in records_in(path):
            k = key.encode() if key else _default_key(rec)
            producer.produce(topic, value=rec, key=k)
            sent += 1
    left = producer.flush(30)
    if left:
        _fail(f"{left} of {sent} records not acknowledged by Kafka at {settings.kafka.bootstrap_servers}")
    typer.echo(f"produced {sent} records to {topic}")


def _default_key(rec: bytes) -> bytes | None:
    try:
        doc = json.loads(rec)
    except ValueError:
        return None
    body = doc.get("payload", doc) if isinstance(doc, dict) else None
    row = (body or {}).get("after") or (body or {}).get("before") if isinstance(body, dict) else None
    if isinstance(row, dict) and "id" in row:
        return json.dumps({"id": row["id"]}).encode()
    return None
