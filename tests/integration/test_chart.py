"""Chart of accounts from Kingdee (BD_Account over HTTP, sandbox) merged with ledger.yaml, used by the checks."""

from __future__ import annotations

import dataclasses

import pytest

from connector.kingdee.chart import fetch_accounts, merge_chart
from connector.sandbox import RunningSandbox
from connector.ledger import ReasonCode
from connector.mapping import Mapper, load_rules
from tests.integration.helpers import RULES, client_for
from tests.unit.helpers import event, sale

pytestmark = pytest.mark.integration


def test_fetched_chart_matches_the_sandbox_and_pages(sandbox: RunningSandbox) -> None:
    rules = load_rules(RULES)
    with client_for(sandbox) as client:
        fetched = fetch_accounts(client, page=7)  # several pages
    accounts = sandbox.server.state.config.accounts
    assert len(accounts) > 7 * 2
    assert set(fetched) == set(accounts)
    for number, a in accounts.items():
        f = fetched[number]
        assert (f.name, f.direction, f.leaf, f.frozen) == (a.name, a.direction, a.leaf, a.frozen), number
    merged, drift = merge_chart(rules.ledger, fetched)
    assert drift.empty, drift.lines()
    # dimensions are not exposed by BD_Account: they come from the file
    assert merged.accounts["1122"].required_dimensions == rules.ledger.accounts["1122"].required_dimensions != set()


def test_kingdee_changes_reach_the_checks_and_are_reported_as_drift(sandbox: RunningSandbox) -> None:
    rules = load_rules(RULES)
    cfg = sandbox.server.state.config
    cfg.accounts["1001"] = dataclasses.replace(cfg.accounts["1001"], frozen=True)  # cash frozen in Kingdee
    del cfg.accounts["6001.09"]  # points deduction account removed in Kingdee
    with client_for(sandbox) as client:
        merged, drift = merge_chart(rules.ledger, fetch_accounts(client))
    assert drift.only_in_file == ("6001.09",)
    assert any(c.startswith("1001 frozen: False → True") for c in drift.changed)

    from_file = Mapper(rules).map(event("pos", "sales_order", after=sale()))
    assert from_file.vouchers and not from_file.rejections  # the file alone does not know
    from_kingdee = Mapper(rules, ledger=merged)
    cash = from_kingdee.map(event("pos", "sales_order", after=sale()))
    assert [r.code for r in cash.rejections] == [ReasonCode.FROZEN_ACCOUNT]
    points = from_kingdee.map(event("pos", "sales_order", after=sale(payment_method="WECHAT", points_deduction="3.00")))
    assert [r.code for r in points.rejections] == [ReasonCode.UNKNOWN_ACCOUNT]
    assert from_kingdee.map(event("pos", "sales_order", after=sale(payment_method="WECHAT"))).vouchers
