"""The same events give the same results as before the performance work of issue #15, bit for bit.

``mapping_corpus.digests`` holds one digest per event of ``mapping_corpus.corpus()`` written by the closure
evaluator of commit e21022d (see ``mapping_corpus``): the decoded event (every value with its type), then
every voucher (key, header, entries with amounts at their exponent, dimensions, explanations, review
reasons, summary) or rejection (code, message, rule, field, value). A faster decoder, compiler, mapper or
check that changes any of it — a voucher key above all, which would re-post everything in production —
fails here, naming the event."""

from __future__ import annotations

from tests.unit import mapping_corpus


def test_corpus_maps_exactly_as_before() -> None:
    expected = mapping_corpus.DIGESTS.read_text(encoding="ascii").split()
    found = mapping_corpus.items()
    assert len(found) == len(expected), f"{len(found)} events in the corpus, {len(expected)} digests on file"
    wrong = [f"{it.label}: {it.digest} ≠ {want}" for it, want in zip(found, expected) if it.digest != want]
    assert not wrong, f"{len(wrong)} of {len(found)} events map differently, first: " + "; ".join(wrong[:5])
    assert len(found) > 8000
