"""The console's labels in English and Chinese (简体中文), one catalog: every key has both.

Templates call ``t("key")`` (or ``t("key", n=3)`` for labels with ``{placeholders}``); a key missing from the
catalog is an error, not a silently English page (tests render every page in both languages). The language is
the user's choice (a cookie set by the switch in the header), else ``console.language``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from connector.console._format import Lang

LANGUAGES: Final[tuple[Lang, ...]] = ("zh", "en")

#: key → (English, Chinese)
LABELS: Final[dict[str, tuple[str, str]]] = {
    # frame
    "app.title": ("kingdee-cdc console", "kingdee-cdc 控制台"),
    "nav.status": ("Sync status", "同步状态"),
    "nav.trace": ("Trace", "追溯"),
    "nav.triage": ("Triage", "异常分析"),
    "nav.reconciliation": ("Reconciliation", "对账"),
    "nav.signed_in_as": ("Signed in as {name} ({role})", "已登录：{name}（{role}）"),
    "nav.sign_out": ("Sign out", "退出"),
    "role.viewer": ("viewer", "只读"),
    "role.admin": ("admin", "管理员"),
    "lang.switch": ("中文", "English"),
    "common.none": ("none", "无"),
    "common.refresh": ("Refreshed every 15 s", "每 15 秒刷新"),
    "common.updated": ("as of {time}", "截至 {time}"),
    "common.ago": ("{age} ago", "{age}前"),
    "common.more": ("more not shown", "更多未显示"),
    "common.search": ("Search", "查询"),
    "common.filter": ("Filter", "筛选"),
    "common.all": ("all", "全部"),
    "common.time": ("Time", "时间"),
    "common.source": ("Source", "来源"),
    "common.reason": ("Reason", "原因"),
    "common.status": ("Status", "状态"),
    "common.message": ("Message", "说明"),
    "common.book": ("Book", "账簿"),
    "common.period": ("Period", "期间"),
    "common.count": ("Count", "数量"),
    "common.kafka": ("Kafka record", "Kafka 记录"),
    "common.row": ("Source row", "源数据行"),
    "common.ok": ("OK", "正常"),
    # login
    "login.title": ("Sign in", "登录"),
    "login.user": ("User", "用户名"),
    "login.secret": ("Password or token", "密码或令牌"),
    "login.submit": ("Sign in", "登录"),
    "login.failed": ("Wrong user, password or token.", "用户名、密码或令牌错误。"),
    "login.throttled": ("Too many failed sign-ins from your address; try again in a few minutes.",
                        "登录失败次数过多，请几分钟后再试。"),
    "login.hint": ("Users and tokens are set in the console section of the configuration.",
                   "用户和令牌在配置文件的 console 部分设置。"),
    # status
    "status.title": ("Sync status", "同步状态"),
    "status.lead": ("Per source system and book, since midnight ({tz}). Red: a threshold of console.thresholds is "
                    "crossed.", "按来源系统与账簿统计，自今日零点（{tz}）起。红色：超过 console.thresholds 设定的阈值。"),
    "status.cards.lag": ("Kafka lag", "Kafka 积压"),
    "status.cards.waiting": ("Vouchers waiting", "待过账凭证"),
    "status.cards.oldest": ("Oldest unposted", "最早未过账"),
    "status.cards.dead_letters": ("Dead letters (new)", "死信（未处理）"),
    "status.cards.feedback": ("Feedback unsent", "未发送回执"),
    "status.cards.reconciliation": ("Flagged in reconciliation", "对账差异"),
    "status.sources": ("Source systems", "来源系统"),
    "status.system": ("System / book", "系统 / 账簿"),
    "status.undecodable": ("records without a change event (undecodable, tombstones, markers)",
                           "无变更事件的记录（无法解码、删除墓碑、事务标记）"),
    "status.lag": ("Lag", "积压"),
    "status.last_event": ("Last event", "最近事件"),
    "status.events_today": ("Events today", "今日事件"),
    "status.vouchered": ("Vouchered", "已生成凭证"),
    "status.rejected": ("Rejected", "已拒绝"),
    "status.dead_lettered": ("Dead-lettered", "进入死信"),
    "status.posted": ("Posted today", "今日过账"),
    "status.waiting": ("Waiting", "待过账"),
    "status.oldest_waiting": ("Oldest unposted", "最早未过账"),
    "status.rejected_by_kingdee": ("Rejected by Kingdee", "金蝶拒绝"),
    "status.needs_attention": ("Needs attention", "需人工处理"),
    "status.periods": ("Periods open / closed", "开放 / 已结账期间"),
    "status.topics": ("Topics", "主题"),
    "status.topics_n": ("{n} topic(s)", "{n} 个主题"),
    "status.open": ("open periods", "开放期间"),
    "status.closed": ("closed periods", "已结账期间"),
    "status.all_open": ("all open", "全部开放"),
    "status.partition": ("Partition", "分区"),
    "status.next_offset": ("Journal position", "日志位置"),
    "status.log_end": ("Log end", "日志末端"),
    "status.kafka_unreachable": ("Kafka did not answer; lag unknown", "Kafka 无响应，积压未知"),
    "status.empty": ("The journal holds no events yet.", "日志中还没有事件。"),
    "status.book_unknown": ("not in the ledger file", "账簿文件中无此账簿"),
    # trace
    "trace.title": ("Trace", "追溯"),
    "trace.lead": ("From a source key, document number, Kafka coordinates, voucher key or Kingdee voucher number to "
                   "everything that happened to it.",
                   "按源主键、单据号、Kafka 位置、凭证键或金蝶凭证号，查看一条数据的完整处理链路。"),
    "trace.placeholder": ("SO20261105000042 · id=42 · pos.public.sales_order[0]@17 · voucher key · 记-202611-00012",
                          "SO20261105000042 · id=42 · pos.public.sales_order[0]@17 · 凭证键 · 记-202611-00012"),
    "trace.by": ("Search in", "查询范围"),
    "trace.by.auto": ("everything", "全部"),
    "trace.by.source_key": ("source key", "源主键"),
    "trace.by.document": ("document number", "单据号"),
    "trace.by.kafka": ("Kafka coordinates", "Kafka 位置"),
    "trace.by.voucher_key": ("voucher key", "凭证键"),
    "trace.by.kingdee_number": ("Kingdee number", "金蝶凭证号"),
    "trace.nothing": ("Nothing in the journal matches {q}.", "日志中没有与 {q} 匹配的记录。"),
    "trace.found": ("{n} source row(s) found", "找到 {n} 个源数据行"),
    "trace.matched_by": ("matched by {by}", "匹配方式：{by}"),
    "trace.undecodable": ("Undecodable record (no source row)", "无法解码的记录（无源数据行）"),
    "trace.events": ("Change events", "变更事件"),
    "trace.vouchers": ("Vouchers", "凭证"),
    "trace.no_vouchers": ("No voucher: the change made none.", "无凭证：此变更未生成凭证。"),
    "trace.journaled": ("journaled", "记入日志"),
    "trace.kafka_time": ("Kafka time", "Kafka 时间"),
    "trace.op": ("Operation", "操作"),
    "trace.outcome": ("Outcome", "结果"),
    "trace.position": ("Source position", "源位置"),
    "trace.dead_letter": ("Dead letter #{id}: {status}", "死信 #{id}：{status}"),
    "trace.feedback": ("Feedback", "回执"),
    "trace.feedback_sent": ("sent {time}", "已发送 {time}"),
    "trace.feedback_unsent": ("not sent yet", "尚未发送"),
    "trace.key": ("Voucher key", "凭证键"),
    "trace.kind": ("Kind", "类型"),
    "trace.date": ("Date", "日期"),
    "trace.moved_from": ("moved from {date}", "原日期 {date}"),
    "trace.rule": ("Rule", "规则"),
    "trace.reverses": ("reverses", "冲销"),
    "trace.reversed_by": ("reversed by", "被冲销于"),
    "trace.entries": ("Entries", "分录"),
    "trace.account": ("Account", "科目"),
    "trace.debit": ("Debit", "借方"),
    "trace.credit": ("Credit", "贷方"),
    "trace.foreign": ("Currency amount", "原币金额"),
    "trace.dimensions": ("Dimensions", "核算维度"),
    "trace.kingdee": ("Kingdee", "金蝶"),
    "trace.kingdee_number": ("Voucher number", "凭证号"),
    "trace.kingdee_waiting": ("not posted yet", "尚未过账"),
    "trace.carried_by": ("Carried by summary voucher {key}", "由汇总凭证 {key} 承载"),
    "trace.audit": ("Audit trail", "审计记录"),
    "trace.total": ("Total", "合计"),
    # triage
    "triage.title": ("Triage", "异常分析"),
    "triage.lead": ("Rejections and undecodable records by time, source and reason. Click a bar or a count to see "
                    "the events.", "按时间、来源与原因统计被拒绝和无法解码的记录。点击图表或数字查看明细。"),
    "triage.range": ("Window", "时间范围"),
    "triage.range.24h": ("last 24 hours", "最近 24 小时"),
    "triage.range.7d": ("last 7 days", "最近 7 天"),
    "triage.range.30d": ("last 30 days", "最近 30 天"),
    "triage.kind": ("Kind", "类型"),
    "triage.kind.rejected": ("rejected by rules", "规则拒绝"),
    "triage.kind.undecodable": ("undecodable", "无法解码"),
    "triage.dl_status": ("Dead letter", "死信状态"),
    "triage.over_time": ("Over time", "时间分布"),
    "triage.by_source": ("By source and reason", "按来源与原因"),
    "triage.events": ("Events", "事件明细"),
    "triage.total": ("{n} in the window", "时间范围内共 {n} 条"),
    "triage.none": ("No rejections or dead letters in this window.", "此时间范围内没有拒绝或死信。"),
    "triage.requeue": ("Requeue selected", "重新入队所选"),
    "triage.requeue_hint": ("Sends the dead letters back to their topic after a fix (same as kingdee-cdc dlq requeue); "
                            "audited.", "修复后将死信重新发送到原主题（同 kingdee-cdc dlq requeue），并记入审计。"),
    "triage.requeued": ("Requeued {n} dead letter(s); audit entries {audit}.", "已重新入队 {n} 条死信；审计记录 {audit}。"),
    "triage.select": ("Select", "选择"),
    "triage.field": ("Field = value", "字段 = 值"),
    "triage.trace": ("trace", "追溯"),
    "triage.showing": ("showing the newest {n}", "显示最新 {n} 条"),
    "triage.filtered": ("Filtered: {what}", "已筛选：{what}"),
    "triage.clear": ("clear", "清除"),
    # reconciliation
    "recon.title": ("Reconciliation", "对账"),
    "recon.lead": ("The latest kingdee-cdc reconcile run per book and period: journal vs Kingdee (and source) per "
                   "account.", "每个账簿和期间最近一次 kingdee-cdc reconcile 的结果：按科目比较日志、金蝶（及源系统）。"),
    "recon.run_at": ("Run at", "运行时间"),
    "recon.lines": ("Lines", "行数"),
    "recon.flagged": ("Flagged", "差异"),
    "recon.abs_difference": ("Absolute difference", "差异绝对值"),
    "recon.none": ("No reconciliation has been recorded yet (kingdee-cdc reconcile --book … --period …).",
                   "尚无对账记录（kingdee-cdc reconcile --book … --period …）。"),
    "recon.details": ("details", "详情"),
    "recon.account": ("Account", "科目"),
    "recon.dimensions": ("Dimensions", "维度"),
    "recon.journal": ("Journal", "日志"),
    "recon.kingdee": ("Kingdee", "金蝶"),
    "recon.source": ("Source", "源系统"),
    "recon.difference": ("Difference", "差额"),
    "recon.in_flight": ("In flight", "过账中"),
    "recon.vouchers": ("Vouchers involved", "相关凭证"),
    "recon.clean": ("No differences: journal and Kingdee agree.", "无差异：日志与金蝶一致。"),
    "recon.missing_in_kingdee": ("Missing in Kingdee", "金蝶中缺失"),
    "recon.unknown_to_journal": ("Unknown to the journal", "日志中不存在"),
    "recon.amount_mismatch": ("Different amounts", "金额不一致"),
    "recon.duplicated": ("Held more than once by Kingdee", "金蝶中重复"),
    "recon.by_dimension": ("by account and dimension", "按科目和维度"),
    "recon.with_source": ("with source totals", "含源系统合计"),
    "recon.back": ("all books and periods", "全部账簿与期间"),
    # errors
    "error.title": ("Something is wrong", "出错了"),
    "error.forbidden": ("Forbidden", "禁止访问"),
    "error.not_found": ("Not found", "未找到"),
    "error.bad_request": ("Bad request", "请求有误"),
    "error.unavailable": ("Unavailable", "暂不可用"),
}


def translate(key: str, lang: Lang, **values: object) -> str:
    """The label ``key`` in ``lang``, with ``{placeholders}`` filled. Raises ``KeyError`` for an unknown key."""
    en, zh = LABELS[key]
    text = zh if lang == "zh" else en
    return text.format(**values) if values else text


def translator(lang: Lang) -> Callable[..., str]:
    def t(key: str, **values: object) -> str:
        return translate(key, lang, **values)
    return t


def language(value: str | None, default: Lang) -> Lang:
    """``value`` if it names a language the console speaks, else ``default``."""
    return "zh" if value == "zh" else "en" if value == "en" else default
