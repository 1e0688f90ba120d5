"""The fault and bad-input suite's ledger: what each test injected, tried and saw.

Tests of the suite are marked ``@pytest.mark.faults`` and take the ``fault_ledger`` fixture. They
say what they did and what came of it, and assert themselves on what must be zero::

    fault_ledger.fault("postgresql cut mid-run")      # one fault injected
    fault_ledger.inputs(1)                            # one hostile input tried (e.g. per example)
    fault_ledger.observe(actions_on_bad_data=n, records_lost=lost, crashes=0)
    assert n == 0 and lost == 0

When ``ROLLBACKD_FAULT_LEDGER`` names a file, each test's counts are appended to it as one JSON
line at teardown; ``python -m bench.faults`` runs the suite so and writes
``bench/results/faults.md``. Without the variable the ledger only counts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

#: Environment variable naming the JSON-lines file the ledger appends to.
LEDGER_ENV = "ROLLBACKD_FAULT_LEDGER"

#: Outcomes the suite reports, each of which must stay 0.
MUST_BE_ZERO = ("actions_on_bad_data", "records_lost", "crashes")


@dataclass
class FaultLedger:
    """One test's counts (mutable on purpose: the test adds to it as it goes)."""

    test: str
    faults: list[str] = field(default_factory=list)
    inputs_tried: int = 0
    actions_on_bad_data: int = 0
    records_lost: int = 0
    crashes: int = 0

    def fault(self, what: str) -> None:
        """Count one injected fault, named for the report (``"mosquitto stopped"``)."""
        self.faults.append(what)

    def inputs(self, count: int = 1) -> None:
        """Count ``count`` hostile or random inputs tried."""
        self.inputs_tried += count

    def observe(self, *, actions_on_bad_data: int = 0, records_lost: int = 0, crashes: int = 0) -> None:
        """Add what the test saw of the outcomes that must stay 0 (the test still asserts them)."""
        self.actions_on_bad_data += actions_on_bad_data
        self.records_lost += records_lost
        self.crashes += crashes


@pytest.fixture
def fault_ledger(request: pytest.FixtureRequest) -> Iterator[FaultLedger]:
    """This test's ledger; appended to ``$ROLLBACKD_FAULT_LEDGER`` at teardown when it is set."""
    ledger = FaultLedger(test=request.node.nodeid)
    yield ledger
    target = os.environ.get(LEDGER_ENV)
    if target:
        with Path(target).open("a", encoding="utf-8") as out:
            out.write(json.dumps(asdict(ledger)) + "\n")
