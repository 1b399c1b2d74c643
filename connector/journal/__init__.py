"""The PostgreSQL journal: vouchers, entries, offsets, outcomes, dead letters, feedback outbox, audit."""

from connector.journal._audit import AuditRow
from connector.journal._feedback import FeedbackEvent, FeedbackReason, FeedbackSource, KingdeeRef, OutboxRow
from connector.journal._journal import Fenced, Journal, Partition, instance_id
from connector.journal._migrate import migrate
from connector.journal._outcomes import BatchResult, EventRecord
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
    VoucherStatus,
)

__all__ = ["IN_KINGDEE", "OPEN_COPIES", "REJECTED_STAGE", "UNSETTLED", "AuditAction", "AuditRow", "BatchResult", "CopyState",
           "DeadLetterStatus", "EventRecord", "FeedbackEvent", "FeedbackReason", "FeedbackSource", "FeedbackStatus",
           "Fenced", "Journal", "KingdeeRef", "OutboxRow", "Outcome", "Partition", "VoucherStatus", "instance_id",
           "migrate"]
