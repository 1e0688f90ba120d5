"""``rollbackd history``: the audit log read back through the real entry point, from SQLite."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from rollbackd.cli import main
from rollbackd.store import AuditEntry, open_store
from rollbackd.store.history import entry_json, format_entries, parse_since, parse_target

REPO = Path(__file__).resolve().parents[1]
NOW = datetime.now(UTC).replace(microsecond=0)

ENTRIES = [
    AuditEntry(kind="daemon.start", summary="rollbackd 0.1.0 started with 2 targets", target=None,
               at=NOW - timedelta(hours=3)),
    AuditEntry(kind="decision", summary="immediate rollback: error rate 12.5% >= 5 x SLO 1%",
               target="shop/checkout", at=NOW - timedelta(hours=2),
               details={"evidence": {"error_rate": 0.125, "threshold": 0.05},
                        "reasons": ["severe", "attributable"]}),
    AuditEntry(kind="action.step", summary="canary weight 20 -> 0", target="shop/checkout",
               at=NOW - timedelta(minutes=20),
               details={"changes": [{"object": "Ingress shop/checkout-canary", "field": "canary-weight",
                                     "before": "20", "after": "0"}]}),
    AuditEntry(kind="hold", summary="fix-forward hold, ETA 180s", target="shop/payments",
               at=NOW - timedelta(minutes=10)),
    AuditEntry(kind="verification", summary="rollback verified\nall criteria held for 300s",
               target="shop/checkout", at=NOW - timedelta(minutes=5)),
]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The command reads the real environment: keep the runner's ROLLBACKD_* out, and show
    times in a fixed zone (UTC-5, no daylight saving) so that local time is predictable."""
    for name in list(os.environ):
        if name.upper().startswith("ROLLBACKD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TZ", "EST+05")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def record(data_dir: Path, entries: Sequence[AuditEntry]) -> None:
    async def write() -> None:
        store = open_store(None, data_dir=data_dir)
        await store.open()
        try:
            for entry in entries:
                await store.record(entry)
        finally:
            await store.close()

    asyncio.run(write())


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A configuration whose store holds :data:`ENTRIES`."""
    data_dir = tmp_path / "data"
    record(data_dir, ENTRIES)
    path = tmp_path / "rollbackd.yaml"
    path.write_text(f"store:\n  data_dir: {data_dir}\n", encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["history", *args])
    out, err = capsys.readouterr()
    return status, out, err


def local(moment: datetime) -> str:
    return moment.astimezone(timezone(timedelta(hours=-5))).strftime("%Y-%m-%d %H:%M:%S")


def test_history_prints_one_aligned_line_per_entry_in_local_time(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(capsys, "--config", str(config))
    assert status == 0
    assert err == ""
    assert out.splitlines() == [
        f"{local(NOW - timedelta(hours=3))}  -              daemon.start  "
        "rollbackd 0.1.0 started with 2 targets",
        f"{local(NOW - timedelta(hours=2))}  shop/checkout  decision      "
        "immediate rollback: error rate 12.5% >= 5 x SLO 1%",
        f"{local(NOW - timedelta(minutes=20))}  shop/checkout  action.step   canary weight 20 -> 0",
        f"{local(NOW - timedelta(minutes=10))}  shop/payments  hold          fix-forward hold, ETA 180s",
        f"{local(NOW - timedelta(minutes=5))}  shop/checkout  verification  "
        "rollback verified all criteria held for 300s",
    ]


def test_history_filters_by_target_since_and_limit(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def summaries(*args: str) -> list[str]:
        status, out, _ = run(capsys, "--config", str(config), "--json", *args)
        assert status == 0
        return [json.loads(line)["summary"] for line in out.splitlines()]

    assert summaries("--target", "shop/checkout") == [
        "immediate rollback: error rate 12.5% >= 5 x SLO 1%",
        "canary weight 20 -> 0",
        "rollback verified\nall criteria held for 300s",
    ]
    # Relative to the command's now: 30 minutes before NOW, however long the suite ran since.
    minutes = 30 + math.ceil((datetime.now(UTC) - NOW).total_seconds() / 60)
    assert summaries("--since", f"{minutes}m") == [
        "canary weight 20 -> 0",
        "fix-forward hold, ETA 180s",
        "rollback verified\nall criteria held for 300s",
    ]
    since = (NOW - timedelta(minutes=15)).isoformat().replace("+00:00", "Z")
    assert summaries("--since", since, "--target", "shop/checkout") == [
        "rollback verified\nall criteria held for 300s",
    ]
    assert summaries("--limit", "2") == [
        "fix-forward hold, ETA 180s", "rollback verified\nall criteria held for 300s",
    ]
    assert summaries("--target", "shop/nothing") == []


def test_history_json_carries_the_details(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--config", str(config), "--json", "--target", "shop/checkout", "--limit", "3")
    status, out, _ = run(capsys, *args)
    assert status == 0
    decision, step, _ = (json.loads(line) for line in out.splitlines())
    assert decision == {
        "seq": 2,
        "at": (NOW - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "target": "shop/checkout",
        "kind": "decision",
        "summary": "immediate rollback: error rate 12.5% >= 5 x SLO 1%",
        "details": {
            "evidence": {"error_rate": 0.125, "threshold": 0.05},
            "reasons": ["severe", "attributable"],
        },
    }
    assert step["details"]["changes"] == [
        {"object": "Ingress shop/checkout-canary", "field": "canary-weight", "before": "20", "after": "0"}
    ]


def test_history_reads_the_store_named_by_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    record(tmp_path / "elsewhere", ENTRIES[:1])
    monkeypatch.setenv("ROLLBACKD_STORE__URL", f"sqlite://{tmp_path / 'elsewhere' / 'rollbackd.db'}")
    status, out, _ = run(capsys)
    assert status == 0
    assert out.splitlines() == [
        f"{local(NOW - timedelta(hours=3))}  -  daemon.start  rollbackd 0.1.0 started with 2 targets"
    ]


def test_history_of_an_empty_store_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record(tmp_path / "data", [])
    path = tmp_path / "rollbackd.yaml"
    path.write_text(f"store:\n  data_dir: {tmp_path / 'data'}\n", encoding="utf-8")
    status, out, err = run(capsys, "--config", str(path), "--target", "shop/checkout")
    assert status == 0
    assert out == ""
    assert err == "rollbackd history: no audit entries for shop/checkout\n"


def test_history_without_a_store_fails_clearly_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "rollbackd.yaml"
    path.write_text(f"store:\n  data_dir: {tmp_path / 'missing'}\n", encoding="utf-8")
    status, out, err = run(capsys, "--config", str(path))
    assert status == 1
    assert out == ""
    assert err.startswith(f"rollbackd history: no store at {tmp_path / 'missing' / 'rollbackd.db'}")
    assert not (tmp_path / "missing").exists()


def test_history_with_a_bad_configuration_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rollbackd.yaml"
    path.write_text("store:\n  url: mysql://db/x\n", encoding="utf-8")
    status, _, err = run(capsys, "--config", str(path))
    assert status == 2
    assert "store.url: unsupported store scheme 'mysql://'" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "argument --since: 'yesterday' is neither a duration"),
        (["--target", "Shop/Checkout!"], "argument --target: 'Shop/Checkout!' is not a target"),
        (["--limit", "0"], "argument --limit: '0' is not a positive whole number"),
    ],
)
def test_history_rejects_bad_arguments(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["history", *args])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_history_through_the_installed_command(config: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rollbackd", "history", "--config", str(config), "--json", "--limit", "1"],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("ROLLBACKD_")},
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert json.loads(line)["kind"] == "verification"


# --- the pieces -----------------------------------------------------------------------------


def test_parse_since_durations_and_times() -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_since("90s", now=now) == now - timedelta(seconds=90)
    assert parse_since("30m", now=now) == now - timedelta(minutes=30)
    assert parse_since("1h30m", now=now) == now - timedelta(minutes=90)
    assert parse_since("2d", now=now) == now - timedelta(days=2)
    assert parse_since("1w", now=now) == now - timedelta(days=7)
    assert parse_since("1.5h", now=now) == now - timedelta(minutes=90)
    assert parse_since("2024-04-30T08:00:00Z", now=now) == datetime(2024, 4, 30, 8, tzinfo=UTC)
    assert parse_since("2024-04-30T10:00:00+02:00", now=now) == datetime(2024, 4, 30, 8, tzinfo=UTC)
    # Without an offset: local time (UTC-5 here).
    assert parse_since("2024-04-30T03:00:00", now=now) == datetime(2024, 4, 30, 8, tzinfo=UTC)
    for bad in ("", "1x", "h", "-1h", "soon", "2024-13-01"):
        with pytest.raises(ValueError, match="neither a duration"):
            parse_since(bad, now=now)


def test_parse_target() -> None:
    assert parse_target("shop/checkout") == "shop/checkout"
    assert parse_target("checkout") == "default/checkout"
    for bad in ("shop/", "/checkout", "a/b/c", "Shop/checkout", ""):
        with pytest.raises(ValueError, match="not a target"):
            parse_target(bad)


def test_format_entries_in_a_given_zone() -> None:
    at = datetime(2024, 5, 1, 12, 0, 5, tzinfo=UTC)
    lines = format_entries(
        [AuditEntry(kind="freeze", summary="global freeze on", at=at),
         AuditEntry(kind="decision", summary="no rollback:  high risk", target="shop/catalog", at=at)],
        tz=timezone(timedelta(hours=2)),
    )
    assert lines == [
        "2024-05-01 14:00:05  -             freeze    global freeze on",
        "2024-05-01 14:00:05  shop/catalog  decision  no rollback: high risk",
    ]
    assert format_entries([]) == []
    assert entry_json(AuditEntry(kind="freeze", summary="on", at=at, seq=7)) == {
        "seq": 7, "at": "2024-05-01T12:00:05Z", "target": None, "kind": "freeze", "summary": "on",
        "details": {},
    }
