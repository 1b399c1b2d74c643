"""Bounded decoding (hardening): whatever arrives, every record becomes an event or a dead letter with a
specific failure class, in bounded time — including decimals beyond Kafka Connect's limits."""

from __future__ import annotations

import base64
import json
import random
import time
from pathlib import Path

import pytest

from connector.events import DecodeFailure, Decoder, FixedSchemas, KafkaCoordinates
from harness import samples

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "debezium"
KNOWN = {"RecordTooLarge", "NestingTooDeep", "NumberTooLong", "NotAvroOrJson", "TruncatedWireHeader", "NotUtf8",
         "InvalidJson", "NoSchemaRegistry", "UnknownSchemaId", "UnusableSchema", "MalformedConnectSchema",
         "AvroBodyMismatch", "NotAnEnvelope", "UnknownOp", "BadSourceBlock", "BadRowImage", "BadKey",
         "FieldTypeMismatch", "NotBase64", "DecimalOutOfRange", "DateOutOfRange", "BadTimestamp"}


def _valid_records() -> list[bytes]:
    gen = samples.SampleGenerator(seed=11)
    out = [samples.encode_avro(t, env, i + 1) for i, t in enumerate(samples.TABLES)
           for _, env in samples.change_stream(gen, t, 4, update_every=2, delete_every=3)]
    out += [samples.encode_json(t, env, schemas=schemas) for t in samples.TABLES for schemas in (True, False)
            for _, env in samples.change_stream(gen, t, 2, update_every=2)]
    out += [p.read_bytes() for p in sorted(FIXTURES.iterdir()) if p.suffix == ".json"]
    return out


def test_ten_thousand_fuzzed_records_are_each_decoded_or_dead_lettered_with_a_specific_class() -> None:
    valid = _valid_records()
    decoder = Decoder(FixedSchemas(None, {i + 1: samples.value_schema(t) for i, t in enumerate(samples.TABLES)}))
    rng = random.Random(20261202)
    classes: dict[str, int] = {}
    slowest = 0.0
    for i in range(10_000):
        raw = bytearray(rng.choice(valid))
        if rng.random() < 0.3:
            raw = raw[:rng.randint(0, len(raw))]
        for _ in range(rng.randint(1, 6)):
            if raw:
                raw[rng.randrange(len(raw))] = rng.randrange(256)
        if rng.random() < 0.2:
            other = rng.choice(valid)
            cut = rng.randrange(len(raw) + 1)
            raw = raw[:cut] + other[rng.randrange(len(other)):]
        started = time.perf_counter()
        result = decoder.decode(bytes(raw), kafka=KafkaCoordinates(topic="fuzz", partition=0, offset=i))
        slowest = max(slowest, time.perf_counter() - started)
        if isinstance(result, DecodeFailure):
            assert result.error_class in KNOWN, (result.error_class, result.reason)
            assert result.reason and not result.reason.startswith("unexpected")
            classes[result.error_class] = classes.get(result.error_class, 0) + 1
    assert sum(classes.values()) > 5_000 and len(classes) >= 8, classes  # the fuzz really broke records
    assert slowest < 0.25, slowest


def _pos_json(**after: object) -> bytes:
    _, env = next(samples.change_stream(samples.SampleGenerator(seed=1), samples.POS, 1))
    doc = json.loads(samples.encode_json(samples.POS, env))
    doc["payload"]["after"].update(after)
    return json.dumps(doc).encode()


@pytest.mark.parametrize("raw, error_class, words", [
    (_pos_json(net_amount=base64.b64encode(b"\x01" * 415_000).decode()), "DecimalOutOfRange", "415,000 bytes"),
    (_pos_json(net_amount=base64.b64encode(b"\x01" * 18).decode()), "DecimalOutOfRange", "38-digit"),
    (b'{"op":"c","source":{"name":"x"},"after":{"a":' + b"9" * 5000 + b"}}", "NumberTooLong", "too long"),
])
def test_decimals_beyond_connect_limits_are_dead_lettered_at_once(raw: bytes, error_class: str, words: str) -> None:
    started = time.perf_counter()
    result = Decoder().decode(raw)
    assert time.perf_counter() - started < 0.1  # a 415 KB decimal took 15.8 s before
    assert isinstance(result, DecodeFailure) and result.error_class == error_class and words in result.reason


def test_an_absurd_decimal_scale_in_the_schema_is_a_specific_failure() -> None:
    doc = json.loads(_pos_json())
    for f in doc["schema"]["fields"]:
        if f["field"] == "after":
            for g in f["fields"]:
                if g["field"] == "net_amount":
                    g["parameters"] = {"scale": "999999999"}
    result = Decoder().decode(json.dumps(doc).encode())
    assert isinstance(result, DecodeFailure) and result.error_class == "DecimalOutOfRange"
    assert "scale 999999999 is beyond Kafka Connect's ±38" in result.reason


def test_a_38_digit_decimal_still_decodes_exactly() -> None:
    from decimal import Decimal

    big = Decimal("12345678901234567890123456789012345.678")  # 38 digits: beyond the default 28-digit context
    unscaled = int("".join(map(str, big.as_tuple().digits)))
    b64 = base64.b64encode(unscaled.to_bytes(17, "big", signed=True)).decode()
    from connector.events import decode_base64_decimal

    assert decode_base64_decimal(b64, 3) == big
