"""What each rejection reason and dead-letter stage means, for a bookkeeper and an operator: the cause and
what to do. One source for the CLI (``dlq list``/``dlq show``), the console and docs/mapping.md (a test keeps
the document's table equal to this one)."""

from __future__ import annotations

from typing import Final, NamedTuple

from connector.ledger._model import ReasonCode


class Explanation(NamedTuple):
    cause: str
    remedy: str


R = ReasonCode
#: every rejection reason: why the change could not become a voucher, and how to get it posted
REASONS: Final[dict[ReasonCode, Explanation]] = {
    R.NO_RULE: Explanation("no rule for the event's system and table",
                           "add a rule, or list the table under `kind: ignore` if it posts nothing"),
    R.NO_PRIMARY_KEY: Explanation("no Kafka key and no `key_columns`",
                                  "key the topic by primary key (Debezium does by default) or set `key_columns`"),
    R.MISSING_FIELD: Explanation("a field the rule reads is missing, or a lookup has no entry",
                                 "fix the source row or add the lookup entry, then `dlq requeue`"),
    R.EXPRESSION_ERROR: Explanation(
        "an expression failed (wrong types, text where a number is needed, no account case matched, a bound "
        "exceeded, anything else that went wrong mapping this event)",
        "`mapping preview` the event to see the expression and value; fix the rule or the row, then requeue"),
    R.FLOAT_AMOUNT: Explanation("(no longer produced) a binary float amount", "—"),
    R.INVALID_AMOUNT: Explanation("not a number, not finite, or beyond any ledger amount",
                                  "fix the amount in the source system, then requeue"),
    R.TOO_MANY_DECIMALS: Explanation("more decimals than the currency has (USD `113.005`)",
                                     "round in the source system: the connector never rounds an amount away"),
    R.NEGATIVE_AMOUNT: Explanation("a negative amount on a rule that does not allow it",
                                   "correct the row, or set `allow_negative:` if negatives are legitimate"),
    R.AMOUNT_OUT_OF_RANGE: Explanation("an implausibly large amount (more than `max_amount_digits` digits)",
                                       "check the row with its owner; raise `max_amount_digits` if it is real"),
    R.INVALID_TEXT: Explanation(
        "a text of the voucher (explanation, dimension, account, group) holds a NUL character, which neither "
        "Kingdee nor the journal can store (shown as `\\u0000`)",
        "remove the character in the source system (MySQL text can hold it), then requeue"),
    R.INVALID_DATE: Explanation("the voucher date is not a date", "fix the date in the source row"),
    R.EMPTY_VOUCHER: Explanation("fewer than two lines after zero lines were left out",
                                 "nothing to book: check the amounts, or the rule's `when:` conditions"),
    R.UNKNOWN_BOOK: Explanation("the book is not configured", "add the book to the ledger file, or fix its lookup"),
    R.UNKNOWN_ACCOUNT: Explanation("the account is not in the chart of accounts",
                                   "add the account in Kingdee (and the ledger file) or fix the rule"),
    R.NON_LEAF_ACCOUNT: Explanation("the account has sub-accounts: Kingdee posts only to leaf accounts (明细科目)",
                                    "post to one of its sub-accounts"),
    R.FROZEN_ACCOUNT: Explanation("the account is frozen or disabled", "unfreeze it in Kingdee or use another"),
    R.MISSING_DIMENSION: Explanation("a dimension (核算维度) the account requires is empty",
                                     "fill it in the source row (e.g. the customer of a credit sale), then requeue"),
    R.CURRENCY_NOT_ALLOWED: Explanation("the account does not keep that currency",
                                        "allow the currency on the account in Kingdee, or post to another"),
    R.NO_EXCHANGE_RATE: Explanation("no rate in the table for that currency and date, or the row's rate is empty",
                                    "add the rate to the rate table (lookups) for that date, then requeue"),
    R.CURRENCY_INCONSISTENT: Explanation("local amount ≠ amount × rate",
                                         "fix the amounts or rate in the source row"),
    R.CLOSED_PERIOD: Explanation(
        "the period is closed (期间已结账) and the book posts corrections in their original period, or no later "
        "period is open", "reopen the period, or open the next one, then requeue"),
    R.PERMISSION_DENIED: Explanation("the source system may not post to that book or account, or has no "
                                     "`permissions:` entry", "grant it in the ledger file's `permissions:`"),
    R.UNBALANCED: Explanation("debits ≠ credits — in local currency, in the transaction currency, or already in the "
                              "source amounts", "the source document does not add up: correct it at the source"),
    R.LINES_MISSING: Explanation(
        "a rule with `lines:` found none of the header's lines in its source transaction (or the event was not "
        "grouped: transaction metadata off, transaction topic not consumed, transaction incomplete after "
        "`transactions.hold_s`)", "see docs/mapping.md, documents with lines"),
    R.UNKNOWN_CURRENCY: Explanation("the currency is not in the book's currency table (or empty)",
                                    "add it to the book's `currencies:` or fix the row"),
    R.INVALID_RATE: Explanation("a rate of 0 or below", "fix the rate in the row or the rate table"),
    R.RATE_OUT_OF_BAND: Explanation("a source rate too far from the rate table's (the book's `rate_band`)",
                                    "check the rate with treasury; widen `rate_band` if it is right"),
    R.UNMATCHED: Explanation("a row of a `coverage: every_row` table matched none of its rules",
                             "add a rule (or a `when:` case) for this kind of row"),
}

#: dead-letter stages: where a record failed (``dead_letters.stage``)
STAGES: Final[dict[str, Explanation]] = {
    "TASK_PUT": Explanation("decoded, but rejected by the mapping rules or the accounting checks (the reason code "
                            "is in the message)", "see the reason code; fix the rule or the row, then `dlq requeue`"),
    "wire": Explanation("neither Avro (Confluent wire format) nor JSON",
                        "check the producer's converter (value.converter) for this topic"),
    "schema": Explanation("the record's Avro or JSON schema could not be had or used (unknown schema id, no "
                          "registry configured, malformed schema)", "check `schema_registry.url` and the subject"),
    "json": Explanation("not UTF-8 or not valid JSON", "check the producer; requeue once it is fixed upstream"),
    "envelope": Explanation("not a Debezium change event (no `op`, no `source` block, a flattened row)",
                            "do not unwrap events upstream (no ExtractNewRecordState SMT on these topics)"),
    "value": Explanation("a field does not match its schema (types, decimals, dates out of range)",
                         "look at the record with `dlq show`; usually a producer or schema bug"),
    "key": Explanation("the Kafka key could not be decoded", "check the key converter of the topic"),
    "limits": Explanation("the record exceeds the decoder's limits (size, nesting, number length)",
                          "raise the limit in `decoder:` only if such records are legitimate"),
}


def explain(code: str) -> Explanation | None:
    """The explanation of a rejection reason code or a dead-letter stage (``None``: not one we know)."""
    try:
        return REASONS[ReasonCode(code)]
    except ValueError:
        return STAGES.get(code)


def reasons_markdown() -> str:
    """The rejection reasons as the Markdown table docs/mapping.md shows."""
    lines = ["| code | cause | what to do |", "|---|---|---|"]
    lines += [f"| `{code.value}` | {e.cause} | {e.remedy} |" for code, e in REASONS.items()
              if code is not ReasonCode.FLOAT_AMOUNT]
    return "\n".join(lines) + "\n"
