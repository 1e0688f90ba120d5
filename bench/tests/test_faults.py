"""``python -m bench.faults`` sums the ledger lines of the fault suite into its report."""

from __future__ import annotations

import json
from dataclasses import asdict

from bench.faults import markdown, summarise
from tests.faultledger import FaultLedger


def ledger_rows() -> list[dict[str, object]]:
    broker = FaultLedger(test="tests/test_faults_mqtt.py::test_outage")
    broker.fault("mosquitto stopped")
    broker.fault("mosquitto stopped")
    prop = FaultLedger(test="tests/test_config.py::test_any_yaml")
    prop.inputs(120)
    kill = FaultLedger(test="tests/test_faults_restart.py::test_kill")
    kill.fault("SIGKILL while acting")
    kill.inputs(3)
    return [asdict(row) for row in (broker, prop, kill)]


def test_a_clean_ledger_sums_to_ok() -> None:
    summary = summarise(0, ledger_rows(), 12.34)
    assert summary["tests"] == 3
    assert summary["faults_injected"] == 3
    assert summary["faults"] == {"SIGKILL while acting": 1, "mosquitto stopped": 2}
    assert summary["inputs_tried"] == 123
    assert (summary["actions_on_bad_data"], summary["records_lost"], summary["crashes"]) == (0, 0, 0)
    assert summary["wall_s"] == 12.3
    assert summary["ok"] is True
    json.dumps(summary)  # written as faults.json
    text = markdown(summary)
    assert "| faults injected | 3 |" in text
    assert "| inputs tried | 123 |" in text
    assert "| mosquitto stopped | 2 |" in text


def test_any_lost_record_crash_or_failed_test_is_not_ok() -> None:
    rows = ledger_rows()
    assert summarise(1, rows, 1.0)["ok"] is False  # a test failed
    assert summarise(0, [], 1.0)["ok"] is False  # nothing ran
    for outcome in ("records_lost", "crashes", "actions_on_bad_data"):
        bad = [dict(row) for row in rows]
        bad[1][outcome] = 1
        summary = summarise(0, bad, 1.0)
        assert summary[outcome] == 1
        assert summary["ok"] is False
