"""The decoder reads JSON with msgspec (decision 0013) and falls back to the standard library for whatever
msgspec refuses: every document must come out exactly as ``json.loads(raw, parse_float=Decimal)`` gives it —
the same values of the same types (a fraction is the Decimal of its text, ``1.50`` keeps its zero; integers of
any size stay ints), the same key order and last-wins duplicates — or fail with the same classification."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.events import ChangeEvent, Decoder
from connector.events._decode import _Failed


def _typed(v: Any) -> Any:
    """A value with every type spelled out (``1 == 1.0 == Decimal(1)`` would hide a difference)."""
    if isinstance(v, dict):
        return ("dict", [(k, _typed(x)) for k, x in v.items()])
    if isinstance(v, list):
        return ("list", [_typed(x) for x in v])
    return (type(v).__name__, repr(v))


def _reference(raw: bytes) -> Any:
    """What the decoder did before msgspec: the first-byte check, then the standard library."""
    if raw[:1] not in (b"{", b"[", b" ", b"\n", b"\t", b"\r", b'"') and not raw[:1].isdigit():
        return ("fail", "NotAvroOrJson")
    try:
        return ("ok", _typed(json.loads(raw, parse_float=Decimal)))
    except RecursionError:
        return ("fail", "RecursionError")
    except UnicodeDecodeError:
        return ("fail", "NotUtf8")
    except json.JSONDecodeError:
        return ("fail", "InvalidJson")
    except ValueError:
        return ("fail", "NumberTooLong")


def _ours(raw: bytes) -> Any:
    try:
        return ("ok", _typed(Decoder()._json(raw, "value")))
    except RecursionError:
        return ("fail", "RecursionError")
    except _Failed as f:
        return ("fail", f.error_class)


number_text = st.one_of(
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
    st.decimals(allow_nan=False, allow_infinity=False, places=None).map(lambda d: format(d, "f")),
    st.decimals(allow_nan=False, allow_infinity=False).map(str),
    st.sampled_from(["1.50", "-0.0", "-0", "0", "1E5", "1e-7", "2.5E+3", "1e999999999", "18446744073709551616",
                     "-9223372036854775809", "9" * 400, "0." + "1" * 60, "NaN", "Infinity", "-Infinity", "01", "+1",
                     ".5", "1.", "0x10"]))
key_text = st.one_of(st.text(max_size=6), st.sampled_from(["a", "amount", "é", "中文", "\ud800", "\"", "\\"]))
plain = st.one_of(st.none(), st.booleans(), st.text(max_size=12).map(json.dumps), number_text)


def _render(tree: Any) -> str:
    """JSON text of a generated tree (objects may repeat a key: the last one wins)."""
    if isinstance(tree, str):
        return tree
    if isinstance(tree, list):
        return "[" + ",".join(_render(x) for x in tree) + "]"
    return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{_render(v)}" for k, v in tree[1]) + "}"


documents = st.recursive(
    plain.map(lambda v: v if isinstance(v, str) else json.dumps(v)),
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.lists(st.tuples(key_text, inner), max_size=5).map(lambda kv: ("object", kv))),
    max_leaves=25).map(_render)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(documents, st.sampled_from(["", " ", "\n", "\ufeff", "x", "\x00"]), st.sampled_from(["utf-8", "utf-8", "utf-16"]),
       st.data())
def test_json_reads_exactly_as_the_standard_library(doc: str, extra: str, encoding: str, data: st.DataObject) -> None:
    text = doc + (extra if data.draw(st.booleans()) else "")
    if data.draw(st.booleans()) and extra == "\ufeff":
        text = extra + doc
    try:
        raw = text.encode(encoding, "surrogatepass")
    except UnicodeEncodeError:
        return
    if data.draw(st.integers(0, 9)) == 0 and raw:  # a damaged byte now and then
        i = data.draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([data.draw(st.integers(0, 255))]) + raw[i + 1:]
    if not raw:
        return
    assert _ours(raw) == _reference(raw), raw


@pytest.mark.parametrize("raw", [
    b'{"a":1.50,"b":-0.0,"c":1E5,"d":-0,"e":12345678901234567890123}', b'{"a":1,"b":2,"a":3}',
    b'{"a":"\\ud800"}', b'{"a":"\xff"}', b'\xef\xbb\xbf{"a":1}', b'{"a":NaN}', b'{"a":"x\x01y"}', b"[" * 1500 + b"]" * 1500,
    b"[" * 900 + b"]" * 900, b'{"a":' + b"9" * 5000 + b"}", b'{"a":0.' + b"9" * 5000 + b"}", b'{"a":"\xed\xa0\x80"}',
    b' {"a":1} ', b'{"a":1} x', '{"a":"é"}'.encode("utf-16"), b'{"a":1e999999999}',
])
def test_documents_msgspec_reads_or_refuses(raw: bytes) -> None:
    assert _ours(raw) == _reference(raw)


def test_a_record_decodes_the_same_through_either_parser() -> None:
    raw = b'{"op":"c","before":null,"after":{"id":1,"amount":113.50,"note":"%s"},"source":{"name":"pos","db":"d",' \
          b'"schema":"public","table":"t","lsn":1,"ts_ms":1},"ts_ms":2}'
    a = Decoder().decode(raw % b"x")
    b = Decoder().decode(raw % b"\\ud800")  # msgspec refuses the lone surrogate: the standard library reads it
    assert isinstance(a, ChangeEvent) and isinstance(b, ChangeEvent)
    assert a.after is not None and b.after is not None and b.after["note"] == "\ud800"
    assert {**a.after, "note": ""} == {**b.after, "note": ""} and a.after["amount"] == Decimal("113.50")
