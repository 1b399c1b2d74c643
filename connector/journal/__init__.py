"""The PostgreSQL journal: vouchers, entries, offsets, outcomes, dead letters, feedback outbox, audit."""

from connector.journal._journal import BatchResult, EventRecord, Fenced, Journal, Outcome, instance_id
from connector.journal._migrate import migrate

__all__ = ["BatchResult", "EventRecord", "Fenced", "Journal", "Outcome", "instance_id", "migrate"]
