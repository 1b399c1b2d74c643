"""Vouchers, entries, rejections, the accounting checks, row state and Kingdee/Avro serialisation."""

from connector.ledger._model import (
    Entry,
    ReasonCode,
    Rejection,
    RowRef,
    Side,
    SourceRef,
    SummaryRef,
    Voucher,
    VoucherKind,
    REVERSAL_PREFIX,
    canonical_pk,
    storable,
    content_digest,
    reversal_key,
    reverse,
    summary_group,
    summary_parts,
    summary_voucher_key,
    voucher_key,
)

from connector.ledger._checks import (
    CHECKS,
    REVIEWS,
    Account,
    AmountHistory,
    Book,
    Cutover,
    LedgerContext,
    Limits,
    Permission,
    check_voucher,
    dimension_slot,
)
from connector.ledger._reasons import REASONS, STAGES, Explanation, explain, reasons_markdown
from connector.ledger._summary import Carried, add_up, carried
from connector.ledger._state import NO_PRIOR, BatchState, InMemoryLedger, Mapped, PriorLookup, SourceChange
from connector.ledger._serde import (
    key_marker,
    kingdee_json,
    render_entry,
    to_kingdee,
    voucher_from_avro,
    voucher_from_json,
    voucher_summary,
    voucher_to_avro,
    voucher_to_json,
)

__all__ = ["CHECKS", "REVIEWS", "Account", "AmountHistory", "Book", "Cutover", "LedgerContext", "Limits", "Permission",
           "check_voucher", "dimension_slot", "key_marker", "kingdee_json", "render_entry", "to_kingdee",
           "voucher_from_avro", "voucher_from_json", "voucher_summary", "voucher_to_avro", "voucher_to_json",
           "Entry", "ReasonCode", "Rejection", "RowRef", "Side", "SourceRef", "SummaryRef", "Voucher", "VoucherKind",
           "REVERSAL_PREFIX", "canonical_pk", "storable", "content_digest", "reversal_key", "reverse", "summary_group", "summary_parts", "summary_voucher_key", "voucher_key",
           "REASONS", "STAGES", "Explanation", "explain", "reasons_markdown", "Carried", "add_up", "carried", "NO_PRIOR", "BatchState", "InMemoryLedger", "Mapped", "PriorLookup", "SourceChange"]
