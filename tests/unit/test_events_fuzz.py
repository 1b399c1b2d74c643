"""Property tests: whatever bytes arrive, the decoder returns a value and never raises."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import samples
from connector.events import (ChangeEvent, DecodeFailure, Decoder, FixedSchemas, KafkaCoordinates, Tombstone,
                              TransactionMarker)
from tests.unit.helpers import FIXTURES, fixture_bytes

AT = KafkaCoordinates(topic="fuzz", partition=1, offset=7)
_GEN = samples.SampleGenerator(seed=11)
VALID = [samples.encode_avro(samples.POS, env, 1)
         for _, env in samples.change_stream(_GEN, samples.POS, 5, update_every=2, delete_every=3)]
VALID += [samples.encode_json(samples.PURCHASING, env)
          for _, env in samples.change_stream(_GEN, samples.PURCHASING, 3, update_every=2)]
VALID += [fixture_bytes(p.name) for p in sorted(FIXTURES.iterdir()) if p.suffix == ".json"]
DECODER = Decoder(FixedSchemas(samples.value_schema(samples.POS), {1: samples.value_schema(samples.POS)}))


def _check(result: object, raw: bytes | None) -> None:
    assert isinstance(result, (ChangeEvent, DecodeFailure, Tombstone, TransactionMarker)), result
    if isinstance(result, DecodeFailure):
        assert result.reason and result.stage
        # Every failure is classified: the catch-all "unexpected …" path means a decoder bug.
        assert not result.reason.startswith("unexpected"), result.reason
        assert result.kafka == AT and result.raw_value == raw


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=512), st.one_of(st.none(), st.binary(max_size=64)))
def test_random_bytes_never_raise(value: bytes, key: bytes | None) -> None:
    _check(DECODER.decode(value, key=key, kafka=AT), value)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.sampled_from(VALID), st.data())
def test_truncated_and_corrupted_valid_messages_never_raise(valid: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(valid)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, max(0, len(valid) - 1)), st.integers(0, 255)), max_size=4))
    mutated = bytearray(valid[:cut] if data.draw(st.booleans()) else valid)
    for pos, byte in flips:
        if pos < len(mutated):
            mutated[pos] = byte
    raw = bytes(mutated)
    _check(DECODER.decode(raw, kafka=AT), raw)


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.floats(allow_nan=True),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(
                        st.sampled_from(["op", "before", "after", "source", "schema", "payload", "status", "id",
                                         "x"]), children, max_size=5), max_leaves=30))
def test_arbitrary_json_documents_never_raise(doc: object) -> None:
    import json

    raw = json.dumps(doc).encode()
    _check(DECODER.decode(raw, kafka=AT), raw)


def test_deeply_nested_json_is_a_failure_not_a_crash() -> None:
    raw = b"[" * 100_000 + b"]" * 100_000
    result = DECODER.decode(raw, kafka=AT)
    assert isinstance(result, DecodeFailure) and result.stage in ("limits", "json")


def test_oversized_record_is_refused_unread() -> None:
    from connector.events import DecoderLimits

    raw = b"{" + b" " * 2048 + b"}"
    result = Decoder(limits=DecoderLimits(max_record_bytes=1024)).decode(raw, kafka=AT)
    assert isinstance(result, DecodeFailure) and result.stage == "limits" and "1024" in result.reason


def test_deeply_nested_json_is_a_limits_failure_not_a_crash() -> None:
    for raw in (b"[" * 200_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
        result = DECODER.decode(raw, kafka=AT)
        assert isinstance(result, DecodeFailure) and result.stage in ("limits", "json"), result
