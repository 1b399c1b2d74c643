"""The PostgreSQL journal: vouchers, entries, offsets, outcomes, dead letters, feedback outbox, audit."""

from connector.journal._audit import AuditRow
from connector.journal._feedback import FeedbackEvent, FeedbackReason, FeedbackSource, KingdeeRef, OutboxRow
from connector.journal._journal import Fenced, Journal, Partition, instance_id
from connector.journal._migrate import migrate
from connector.journal._outcomes import BatchResult, EventRecord
from connector.journal._summaries import (
    Closed,
    SummaryDifference,
    SummaryRow,
    close_summary,
    due_summaries,
    get_summary,
    list_summaries,
    summary_differences,
)
from connector.journal._status import (
    IN_KINGDEE,
    OPEN_COPIES,
    REJECTED_STAGE,
    UNSETTLED,
    AuditAction,
    CopyState,
    DeadLetterStatus,
    FeedbackStatus,
    Outcome,
    SummaryState,
    VoucherStatus,
)

__all__ = ["IN_KINGDEE", "OPEN_COPIES", "REJECTED_STAGE", "UNSETTLED", "AuditAction", "AuditRow", "BatchResult", "Closed", "CopyState",
           "DeadLetterStatus", "EventRecord", "FeedbackEvent", "FeedbackReason", "FeedbackSource", "FeedbackStatus",
           "Fenced", "Journal", "KingdeeRef", "OutboxRow", "Outcome", "Partition", "SummaryDifference", "SummaryRow", "SummaryState", "VoucherStatus", "close_summary", "due_summaries", "get_summary", "instance_id", "list_summaries", "summary_differences",
           "migrate"]
