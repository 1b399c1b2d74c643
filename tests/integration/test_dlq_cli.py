"""`kingdee-cdc dlq list|show|reasons` on a real journal: every dead letter says what it means and what to do."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from connector.events import Decoder, KafkaCoordinates
from connector.journal import EventRecord, Journal, Outcome
from connector.mapping import Mapper, load_rules
from tests.integration.helpers import CLI, RULES, rows
from tests.unit.helpers import event, sale


def test_dead_letters_explain_their_reason_and_what_to_do(pg_dsn: str, tmp_path: Path) -> None:
    journal = Journal(pg_dsn, group="dlq-cli")
    journal.migrate()
    rejected = Mapper(load_rules(RULES)).map(event("pos", "sales_order", "c", after=sale(payment_method="CREDIT",
                                                                                      customer_code=None)))
    assert [r.code.value for r in rejected.rejections] == ["MISSING_DIMENSION"]
    raw = b'{"id": 7, "amount": "1.00"}'
    failure = Decoder().decode(raw, kafka=KafkaCoordinates(topic="pos", partition=0, offset=1))
    journal.write_batch([
        EventRecord(kafka=KafkaCoordinates(topic="pos", partition=0, offset=0), outcome=Outcome.REJECTED,
                    event=event("pos", "sales_order", "c", after=sale()), rejections=rejected.rejections),
        EventRecord(kafka=KafkaCoordinates(topic="pos", partition=0, offset=1), outcome=Outcome.DEAD_LETTERED,
                    failure=failure, raw_value=raw)  # type: ignore[arg-type]
    ], {("pos", 0): (0, 2)})
    journal.close()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"journal": {"dsn": pg_dsn}, "kafka": {"group_id": "dlq-cli"}}))

    def cli(*args: str) -> str:
        done = subprocess.run([CLI, *args, "-c", str(cfg)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    listed = cli("dlq", "list")
    assert "1 rejected by the mapping rules or checks, 1 undecodable" in listed
    ids = [int(i) for (i,) in rows(pg_dsn, "SELECT id FROM kdcdc.dead_letters ORDER BY kafka_offset")]
    shown = json.loads(cli("dlq", "show", str(ids[0])))
    assert shown["explanation"]["code"] == "MISSING_DIMENSION"
    assert "dimension" in shown["explanation"]["cause"] and "requeue" in shown["explanation"]["remedy"]
    undecodable = json.loads(cli("dlq", "show", str(ids[1])))
    assert undecodable["stage"] == "envelope" and undecodable["explanation"]["code"] == "envelope"
    assert "ExtractNewRecordState" in undecodable["explanation"]["remedy"]
    reasons = subprocess.run([CLI, "dlq", "reasons"], capture_output=True, text=True, timeout=60).stdout
    assert "MISSING_DIMENSION" in reasons and "ExtractNewRecordState" in reasons
