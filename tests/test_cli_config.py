"""The ``rollbackd`` command's configuration subcommands, run through the real entry point."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import rollbackd
from rollbackd.cli import main

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config" / "rollbackd.example.yaml"

GOOD = """\
targets:
  - name: catalog
    namespace: shop
    strategy: deployment
    candidate: {deployment: catalog}
"""

BAD = """\
interval_s: soon
targets:
  - name: checkout
    strategy: canary
    slos: {max_error_rate: 0.02}
"""


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command reads the real environment: keep the runner's own ROLLBACKD_* out of it."""
    for name in list(os.environ):
        if name.upper().startswith("ROLLBACKD_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rollbackd.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_check_config_accepts_a_good_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, GOOD)
    assert main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{path}: OK (1 target)\n"
    assert err == ""


def test_check_config_accepts_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(EXAMPLE)]) == 0
    assert capsys.readouterr().out == f"{EXAMPLE}: OK (5 targets)\n"


def test_check_config_reports_every_problem_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, BAD)
    assert main(["check-config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{path}:1: interval_s: expected a number of seconds at least 0.1 and at most 3600 (1 hour),"
        " got 'soon'",
        f"{path}:3: targets[0] (checkout): missing required key 'candidate' (the new version being judged)",
        f"{path}:5: targets[0] (checkout): unknown key 'slos' — did you mean 'slo'?",
    ]


def test_check_config_reports_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.yaml"
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"{path}: cannot read the configuration file: No such file or directory\n"


def test_check_config_applies_the_environment_unless_told_not_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, GOOD)
    monkeypatch.setenv("ROLLBACKD_INTERVAL_S", "never")
    assert main(["check-config", str(path)]) == 2
    assert capsys.readouterr().err == (
        "environment variable ROLLBACKD_INTERVAL_S: interval_s:"
        " expected a number of seconds at least 0.1 and at most 3600 (1 hour), got 'never'\n"
    )
    assert main(["check-config", "--ignore-env", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: OK (1 target)\n"


def test_config_schema_prints_json_schema_with_targets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config-schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["properties"]["targets"]["items"] == {"$ref": "#/$defs/TargetSettings"}
    target = schema["$defs"]["TargetSettings"]
    assert set(target["required"]) == {"name", "strategy", "candidate"}
    assert target["additionalProperties"] is False
    assert {"slo", "detection", "policy", "queries", "ingress", "service"} <= set(target["properties"])


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"rollbackd {rollbackd.__version__}\n"


def test_no_command_prints_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: rollbackd")
    for command in ("run", "replay", "check-config", "config-schema"):
        assert command in err


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


def test_run_takes_the_config_path_from_the_environment_when_not_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import rollbackd.daemon.main

    seen: list[argparse.Namespace] = []

    def fake_run(args: argparse.Namespace) -> int:
        seen.append(args)
        return 7

    monkeypatch.setattr(rollbackd.daemon.main, "cli_run", fake_run)
    monkeypatch.setenv("ROLLBACKD_CONFIG", "/etc/rollbackd/from-env.yaml")
    assert main(["run"]) == 7
    assert main(["run", "--config", "given.yaml"]) == 7
    monkeypatch.delenv("ROLLBACKD_CONFIG")
    assert main(["run"]) == 7
    assert [args.config for args in seen] == ["/etc/rollbackd/from-env.yaml", "given.yaml", None]


def test_replay_passes_files_and_config_through(monkeypatch: pytest.MonkeyPatch) -> None:
    import rollbackd.replay

    seen: list[argparse.Namespace] = []

    def fake_replay(args: argparse.Namespace) -> int:
        seen.append(args)
        return 0

    monkeypatch.setattr(rollbackd.replay, "cli_replay", fake_replay)
    monkeypatch.setenv("ROLLBACKD_CONFIG", "/etc/rollbackd/from-env.yaml")
    assert main(["replay", "a.json", "b.json", "--config", "t.yaml"]) == 0
    assert main(["replay", "a.json"]) == 0
    assert [(args.files, args.config) for args in seen] == [
        (["a.json", "b.json"], "t.yaml"),
        (["a.json"], None),  # replay is reproducible: it ignores ROLLBACKD_CONFIG
    ]


def _subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ROLLBACKD_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def test_python_m_rollbackd_check_config(tmp_path: Path) -> None:
    good = write(tmp_path, GOOD)
    done = subprocess.run(
        [sys.executable, "-m", "rollbackd", "check-config", str(good)],
        capture_output=True, text=True, env=_subprocess_env(), timeout=60, check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{good}: OK (1 target)\n", "")

    bad = tmp_path / "bad.yaml"
    bad.write_text("interval_s: 10\nprometheus:\n  url: http://127.0.0.1: 9090\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "rollbackd", "check-config", str(bad)],
        capture_output=True, text=True, env=_subprocess_env(), timeout=60, check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(f"{bad}:3:24: invalid YAML: mapping values are not allowed here. Hint: ")
    assert "needs quotes" in done.stderr
    assert len(done.stderr.splitlines()) == 1
