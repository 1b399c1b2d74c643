"""The journal's named states: each a ``StrEnum`` whose values are exactly the text the database stores
(the CHECK constraints in ``migrations/``) and feedback consumers read (``schemas/feedback.event.avsc``).

Names equal values throughout, so a member compares, hashes and formats like the stored text. In SQL, put
members in as literals (``Journal.q(..., posted=VoucherStatus.POSTED)``) or pass them as parameters.
"""

from __future__ import annotations

import enum
from typing import Final


class VoucherStatus(enum.StrEnum):
    """Where a journaled voucher stands with Kingdee (``vouchers.status``)."""

    JOURNALED = "JOURNALED"  #: in the journal, waiting to be claimed by a poster
    POSTING = "POSTING"  #: claimed by a poster; or its BatchSave outcome is unknown (``unknown_since``)
    POSTED = "POSTED"  #: saved in Kingdee (its id and number recorded)
    REJECTED_BY_KINGDEE = "REJECTED_BY_KINGDEE"  #: Kingdee refused it (its messages recorded)
    REVERSED = "REVERSED"  #: posted, then reversed by a posted reversal
    NEEDS_ATTENTION = "NEEDS_ATTENTION"  #: Kingdee holds its key more than once: a person chooses
    OPENING = "OPENING"  #: opening state at a source's cutover: in force, never posted
    #: a contribution to a summary voucher (汇总凭证): never posted alone; in Kingdee through its summary
    SUMMARIZED = "SUMMARIZED"


#: vouchers not settled yet: waiting, being posted, or with an unknown outcome waiting for its grace period
UNSETTLED: Final = (VoucherStatus.JOURNALED, VoucherStatus.POSTING)
#: vouchers whose lines are in Kingdee's books
IN_KINGDEE: Final = (VoucherStatus.POSTED, VoucherStatus.REVERSED)


class SummaryState(enum.StrEnum):
    """Where a summary stands (``summaries.state``); its voucher's own status says where it is in Kingdee."""

    OPEN = "OPEN"  #: taking contributions until its close is due (or it is closed on command)
    CLOSED = "CLOSED"  #: frozen: its summary voucher is journaled (or it netted to nothing)
    NEEDS_ATTENTION = "NEEDS_ATTENTION"  #: its sum failed a check at close (``problem``): a person decides


class Outcome(enum.StrEnum):
    """What became of one consumed record (``event_log.outcome``)."""

    VOUCHERED = "VOUCHERED"
    REJECTED = "REJECTED"
    DEAD_LETTERED = "DEAD_LETTERED"
    SKIPPED = "SKIPPED"
    DUPLICATE = "DUPLICATE"
    #: a document line whose change is carried by its header's voucher (same source transaction)
    GROUPED = "GROUPED"


class FeedbackStatus(enum.StrEnum):
    """What the upstream system is told (``outbox.status``; the ``Status`` enum of ``feedback.event.avsc``)."""

    JOURNALED = "JOURNALED"
    POSTED = "POSTED"
    REJECTED = "REJECTED"  #: by mapping or the accounting checks
    REJECTED_BY_KINGDEE = "REJECTED_BY_KINGDEE"
    REVERSED = "REVERSED"
    DEAD_LETTERED = "DEAD_LETTERED"  #: undecodable
    NEEDS_ATTENTION = "NEEDS_ATTENTION"


class DeadLetterStatus(enum.StrEnum):
    """``dead_letters.status``."""

    NEW = "NEW"
    REQUEUED = "REQUEUED"  #: re-published to its topic (``kingdee-cdc dlq requeue``)
    RESOLVED = "RESOLVED"


#: the dead-letter stage of a record the rules or checks rejected (Kafka Connect's stage for a sink task's put);
#: undecodable records carry their decoding stage (``DecodeFailure.stage``: schema, json, avro …)
REJECTED_STAGE: Final = "TASK_PUT"


class CopyState(enum.StrEnum):
    """An extra copy of a voucher key found in Kingdee (``duplicate_copies.state``)."""

    FOUND = "FOUND"  #: unaudited, same lines as the copy kept: being deleted
    DELETED = "DELETED"
    NEEDS_HUMAN = "NEEDS_HUMAN"  #: audited, different lines, or no copy to keep: a person decides
    RESOLVED = "RESOLVED"  #: gone from Kingdee without us (a person deleted it)


#: copies still in Kingdee: being deleted, or waiting for a person
OPEN_COPIES: Final = (CopyState.FOUND, CopyState.NEEDS_HUMAN)


class AuditAction(enum.StrEnum):
    """``audit.action``: what happened, by whom is the row's ``actor``."""

    #: a batch of the pipeline: its offsets and outcomes; the vouchers it journaled name it (``batch_id``)
    BATCH_JOURNALED = "BATCH_JOURNALED"
    #: a voucher journaled outside the consumed stream (``replay --repost-changed``); before 0009 also the
    #: pipeline's, one row per voucher
    JOURNALED = "JOURNALED"
    DUPLICATE_SKIPPED = "DUPLICATE_SKIPPED"  #: before 0009: a redelivered change (now counted in its batch's row)
    REJECTED = "REJECTED"
    DEAD_LETTERED = "DEAD_LETTERED"
    # the poster: a settled voucher's new status, and what it did on the way
    POSTED = "POSTED"
    REJECTED_BY_KINGDEE = "REJECTED_BY_KINGDEE"
    NEEDS_ATTENTION = "NEEDS_ATTENTION"
    REVERSED = "REVERSED"
    OUTCOME_UNKNOWN = "OUTCOME_UNKNOWN"
    LEASE_TAKEN_OVER = "LEASE_TAKEN_OVER"
    DUPLICATE_FOUND = "DUPLICATE_FOUND"
    DUPLICATE_FLAGGED = "DUPLICATE_FLAGGED"
    DUPLICATE_DELETED = "DUPLICATE_DELETED"
    DUPLICATE_RESOLVED = "DUPLICATE_RESOLVED"
    # summaries
    SUMMARY_CLOSED = "SUMMARY_CLOSED"
    SUMMARY_NEEDS_ATTENTION = "SUMMARY_NEEDS_ATTENTION"
    # operators
    DLQ_REQUEUED = "DLQ_REQUEUED"
    OFFSETS_SET = "OFFSETS_SET"
    VOUCHER_RESENT = "VOUCHER_RESENT"  #: a voucher Kingdee refused, sent again after a fix in Kingdee
