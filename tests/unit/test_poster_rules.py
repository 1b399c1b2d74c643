"""Pure parts of the poster and the sandbox: reversal explanations, option and setting checks, the late-commit
window, Kingdee operation answers."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.config import load_settings
from connector.errors import ConfigError
from connector.kingdee import KingdeeClient
from connector.kingdee._client import encode_body
from connector.kingdee.poster import OPENING_NUMBER, PosterOptions, name_original, reversal_text
from connector.sandbox import Faults
from connector.ledger import Entry, RowRef, Side, SourceRef, Voucher, VoucherKind, kingdee_json, to_kingdee


def _reversal(header: str, lines: tuple[str, ...]) -> Voucher:
    src = SourceRef(row=RowRef(system="pos", table="public.sales_order", pk='{"id":1}'), position="lsn:2", op="u")
    return Voucher(key="ab" * 16, kind=VoucherKind.REVERSAL, reverses="cd" * 16, book="001", data_centre=None,
                   date=dt.date(2026, 11, 3), business_date=None, group="PRE001", explanation=header,
                   entries=tuple(Entry(account=a, side=s, amount=Decimal("-10.00"), explanation=t,
                                       amount_for=Decimal("-10.00"))
                                 for (a, s), t in zip((("1122", Side.DEBIT), ("6001.01", Side.CREDIT)), lines)),
                   source=src, rule_id="pos-sales", rule_version="1")


@pytest.mark.parametrize(("text", "expected"), [
    ("冲销 销售 SO-1", "冲销 记-202611-00007 销售 SO-1"),  # the 冲销 prefix is replaced
    ("销售 SO-1", "冲销 记-202611-00007 销售 SO-1"),  # no prefix: prepended
    ("冲销 ", "冲销 记-202611-00007"),
    ("冲销销售", "冲销 记-202611-00007 冲销销售"),  # only "冲销 " with its space counts as the prefix
])
def test_reversal_text_names_the_original(text: str, expected: str) -> None:
    assert reversal_text(text, "记-202611-00007") == expected


def test_reversal_text_keeps_the_500_character_limit() -> None:
    out = reversal_text("冲销 " + "摘" * 499, "记-202611-00007")
    assert len(out) == 500 and out.startswith("冲销 记-202611-00007 摘")


def test_name_original_rewrites_header_and_every_line_and_keeps_the_marker() -> None:
    v = name_original(_reversal("冲销 销售单 SO-1", ("冲销 应收 SO-1", "")), "记-202611-00007")
    assert v.explanation == "冲销 记-202611-00007 销售单 SO-1"
    model = to_kingdee(v)
    texts = [e["FEXPLANATION"] for e in model["FEntity"]]
    # the second line has no explanation of its own: Kingdee gets the header's
    assert texts == [f"冲销 记-202611-00007 应收 SO-1 [kdcdc:{'ab' * 16}]", "冲销 记-202611-00007 销售单 SO-1"]
    long = to_kingdee(name_original(_reversal("h", ("摘" * 500, "摘" * 500)), OPENING_NUMBER))["FEntity"]
    assert all(len(e["FEXPLANATION"]) <= 500 for e in long)
    assert long[0]["FEXPLANATION"].startswith("冲销 期初 摘") and long[0]["FEXPLANATION"].endswith(f"[kdcdc:{'ab' * 16}]")


def test_poster_options_are_checked() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        PosterOptions(unknown_grace_s=0)
    with pytest.raises(ValueError, match="key_field must name"):
        PosterOptions(marker=False)
    assert PosterOptions(marker=False, key_field="F_KDCDC_KEY").lease_s == 300


def test_settings_refuse_a_grace_period_not_longer_than_the_timeout() -> None:
    s = load_settings()
    assert (s.kingdee.lease_s, s.kingdee.unknown_outcome_grace_s, s.kingdee.duplicate_scan_every_s,
            s.kingdee.delete_duplicates) == (300, 300, 600, True)
    with pytest.raises(ConfigError, match=r"unknown_outcome_grace_s \(60\) must be longer than timeout_s \(60\)"):
        load_settings(kingdee={"timeout_s": 60, "unknown_outcome_grace_s": 60})
    with pytest.raises(ConfigError, match=r"lease_s \(20\) must be longer than timeout_s \(30\)"):
        load_settings(kingdee={"lease_s": 20})


def test_late_commit_window() -> None:
    f = Faults()
    assert not f.slow_at(0.1)
    f.update({"slow_ms": 1500, "slow_every_s": 1.0, "slow_for_s": 0.3})
    assert f.slow_at(0.1) and f.slow_at(2.29) and not f.slow_at(0.31) and not f.slow_at(5.5)
    f.update({"slow_every_s": 0})
    assert f.slow_at(0.9)  # every write is slow
    with pytest.raises(ValueError, match="must not be negative"):
        f.update({"slow_ms": -1})
    with pytest.raises(ValueError, match="must be a number"):
        f.update({"slow_for_s": "soon"})


def test_operation_outcome_reads_per_item_results() -> None:
    answer = {"Result": {"ResponseStatus": {"IsSuccess": False, "MsgCode": 12, "SuccessEntitys": [
        {"Id": "100001", "Number": "记-202611-00001", "DIndex": 0}], "Errors": [
        {"FieldName": "FDocumentStatus", "Message": "凭证记-202611-00002当前状态C不允许Delete", "DIndex": 1}]}}}
    assert KingdeeClient.operation_outcome(answer) == (["100001"], ["凭证记-202611-00002当前状态C不允许Delete"])
    assert KingdeeClient.operation_outcome([]) == ([], [])


def _dimensioned() -> Voucher:
    v = _reversal("冲销 销售 SO-1 \u2028 \"引号\" \\ 反斜杠", ("收款", ""))
    first = v.entries[0]._replace(dimensions=MappingProxyType({"FLEX6": "C0001"}), quantity=Decimal("1E+2"),
                                  price=Decimal("0.1000"), rate=Decimal("7.1234567890"))
    return v._replace(entries=(first, *v.entries[1:]))


def test_request_bodies_are_byte_for_byte_the_ledgers_kingdee_json() -> None:
    """The client writes bodies with msgspec; what Kingdee receives is exactly what ``kingdee_json`` wrote:
    amounts as exact numbers (their text), non-ASCII as UTF-8, the same separators and escapes."""
    models = [to_kingdee(v, None, key_field=kf) for v in (_reversal("销售 SO-1", ("a", "b")), _dimensioned())
              for kf in (None, "F_KDCDC_KEY")]
    body = {"formid": "GL_VOUCHER", "data": {"Model": models, "NeedReturnFields": ["FBillNo"], "BatchCount": 4,
                                             "IsDeleteEntry": "true"}}
    assert encode_body(body) == kingdee_json(body)
    assert b'"FDEBIT":-10.00' in encode_body(body) and b'"FQty":1E+2' in encode_body(body)


@settings(max_examples=300, deadline=None)
@given(st.decimals(allow_nan=False, allow_infinity=False), st.text(max_size=20))
def test_any_amount_and_text_encode_as_kingdee_json_does(amount: Decimal, text: str) -> None:
    body = {"a": amount, "t": text, "l": [amount, None, True, 3]}
    assert encode_body(body) == kingdee_json(body)


def test_the_sandbox_reads_and_stores_what_it_did_with_the_standard_library() -> None:
    """The sandbox parses with msgspec and copies stored models through it: the same values (amounts as
    ``Decimal``, stored as their text) as ``json.loads(parse_float=Decimal)`` and ``json.dumps(default=str)``."""
    from connector.sandbox._server import _parse, _plain

    raw = encode_body({"data": {"Model": [to_kingdee(_dimensioned(), None)], "x": 1.5e300, "big": 10**30}})
    parsed = _parse(raw)
    expected = json.loads(raw, parse_float=Decimal)
    assert parsed == expected and repr(parsed) == repr(expected)
    model = parsed["data"]["Model"][0]
    assert _plain(model) == json.loads(json.dumps(model, default=str))
    assert _parse(b'{"x": NaN}')["x"] != 0  # what msgspec refuses still parses as before
