"""Transitional: the old home of the rule loader (split into _yaml, _spec, _compile and _load)."""

from connector.mapping._load import ledger_context as _ledger_context
from connector.mapping._spec import LedgerSpec

__all__ = ["LedgerSpec", "_ledger_context"]
