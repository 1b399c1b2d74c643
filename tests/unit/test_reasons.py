"""Every rejection reason and dead-letter stage is explained (cause and what to do), and docs/mapping.md shows the
same table the CLI prints."""

from __future__ import annotations

import re
from pathlib import Path

from connector.events import DecodeFailure
from connector.journal import REJECTED_STAGE
from connector.ledger import REASONS, STAGES, ReasonCode, explain, reasons_markdown

ROOT = Path(__file__).resolve().parents[2]


def test_every_reason_code_has_a_cause_and_a_remedy() -> None:
    assert set(REASONS) == set(ReasonCode)
    for code in ReasonCode:
        e = explain(code.value)
        assert e is not None and e.cause and e.remedy, code


def test_every_decode_stage_the_decoder_can_produce_is_explained() -> None:
    source = (ROOT / "connector" / "events" / "_decode.py").read_text(encoding="utf-8")
    stages = set(re.findall(r'_Failed\("([a-z]+)"', source)) | set(re.findall(r'stage="([a-z]+)"', source))
    assert stages, "the decoder's stages could not be found in its source"
    assert stages | {REJECTED_STAGE} <= set(STAGES), stages - set(STAGES)
    assert DecodeFailure.__doc__ is not None and all(s in DecodeFailure.__doc__ for s in stages)
    assert explain("NO_SUCH_THING") is None


def test_the_documented_table_is_the_one_in_the_code() -> None:
    assert reasons_markdown() in (ROOT / "docs" / "mapping.md").read_text(encoding="utf-8")
