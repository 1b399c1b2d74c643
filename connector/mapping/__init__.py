"""Declarative mapping: YAML rules turn change events into vouchers (pure, no I/O)."""

from connector.ledger import NO_PRIOR, InMemoryLedger, PriorLookup  # row state: re-exported for existing imports
from connector.mapping._engine import Mapper, MapResult
from connector.mapping._expr import Compiler, EvalError, ExprError, Tables
from connector.mapping._compile import Rule, RuleSet
from connector.mapping._load import load_rules
from connector.mapping._spec import GoldenCase
from connector.mapping._yaml import RuleError

__all__ = ["Compiler", "EvalError", "ExprError", "GoldenCase", "InMemoryLedger", "MapResult", "Mapper", "NO_PRIOR",
           "PriorLookup", "Rule", "RuleError", "RuleSet", "Tables", "load_rules"]
