"""A configuration file can never hold what cannot work: every number has finite bounds (in the
schema too), and no file — binary, UTF-16, huge, deeply nested, with integers too long for Python —
gives anything but a clean error naming the file (exit 2 from the command)."""

from __future__ import annotations

import json
import math
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from rollbackd.cli import main
from rollbackd.config.loader import MAX_DEPTH, MAX_FILE_BYTES, ConfigError, load_settings
from rollbackd.config.settings import Settings
from tests.faultledger import FaultLedger

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "rollbackd.example.yaml"

#: A document with one of each list item, so that every setting has a place in it.
BASE: dict[str, Any] = {
    "events": {"webhooks": [{"name": "audit", "url": "http://hooks.example/rollbackd"}]},
    "targets": [
        {
            "name": "checkout",
            "namespace": "shop",
            "strategy": "canary",
            "ingress": "checkout-canary",
            "baseline": {"deployment": "checkout"},
            "candidate": {"deployment": "checkout-canary"},
        }
    ],
}


def _unwrap(annotation: Any) -> Any:
    args = [arg for arg in getattr(annotation, "__args__", ()) if arg is not type(None)]
    return args[0] if len(args) == 1 and type(None) in getattr(annotation, "__args__", ()) else annotation


KeyPath = tuple[str | int, ...]


def number_paths(model: type[BaseModel] = Settings, prefix: KeyPath = ()) -> list[KeyPath]:
    """The path of every number setting, list items at index 0 (``targets[0].slo.max_p95_ms``)."""
    paths: list[KeyPath] = []
    for name, field in model.model_fields.items():
        annotation = _unwrap(field.annotation)
        item = getattr(annotation, "__args__", (None,))[0]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths.extend(number_paths(annotation, (*prefix, name)))
        elif getattr(annotation, "__origin__", None) is tuple and isinstance(item, type) and issubclass(
            item, BaseModel
        ):
            paths.extend(number_paths(item, (*prefix, name, 0)))
        elif annotation in (int, float) and name != "qos":
            paths.append((*prefix, name))
    return paths


#: The target a setting under ``targets[0].<key>`` needs: one whose strategy uses that key.
TARGET_FOR: dict[str, dict[str, Any]] = {
    "flag": {
        "name": "checkout",
        "namespace": "shop",
        "strategy": "feature-flag",
        "candidate": {"deployment": "checkout"},
        "flag": {"name": "new_checkout", "store": {"kind": "sql", "dsn_file": "/run/secrets/flags-dsn"}},
    },
    "command": {"name": "checkout", "namespace": "shop", "strategy": "command",
                "candidate": {"deployment": "checkout"}, "command": {"argv": ["./deploy.sh", "rollback"]}},
    "config": {"name": "checkout", "namespace": "shop", "strategy": "config",
               "candidate": {"deployment": "checkout"}, "config": {"configmaps": ["checkout-config"]}},
}


def with_value(path: KeyPath, value: Any) -> dict[str, Any]:
    document: Any = json.loads(json.dumps(BASE))
    if len(path) > 2 and path[0] == "targets" and path[2] in TARGET_FOR:
        document["targets"] = [json.loads(json.dumps(TARGET_FOR[str(path[2])]))]
    node = document
    for part in path[:-1]:
        node = node[part] if isinstance(part, int) else node.setdefault(part, {})
    node[path[-1]] = value
    return dict(document)


def shown(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "rollbackd.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def check_config(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``rollbackd check-config PATH``: its exit status and what it printed on stderr."""
    status = main(["check-config", "--ignore-env", str(path)])
    return status, capsys.readouterr().err


NUMBER_PATHS = number_paths()


def test_every_number_setting_is_covered() -> None:
    names = {shown(path) for path in NUMBER_PATHS}
    assert {"interval_s", "targets[0].slo.max_p95_ms", "targets[0].policy.cooldown_s",
            "events.webhooks[0].timeout_s", "events.mqtt.reconnect_max_s", "leader_election.lease_duration_s",
            "kubernetes.retries", "store.outbox_retention_s", "defaults.detection.min_requests"} <= names
    assert len(NUMBER_PATHS) > 50


def test_the_schema_bounds_every_number(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config-schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    unbounded: list[str] = []
    numbers = 0

    def walk(node: Any, where: str) -> None:
        nonlocal numbers
        if isinstance(node, dict):
            if node.get("type") in ("number", "integer") and "const" not in node:
                numbers += 1
                low = "minimum" in node or "exclusiveMinimum" in node
                high = "maximum" in node or "exclusiveMaximum" in node
                if not (low and high):
                    unbounded.append(where)
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{where}/{index}")

    walk(schema, "")
    assert numbers > 50
    assert unbounded == []


@pytest.mark.parametrize("path", NUMBER_PATHS, ids=shown)
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1.0e+300"])
def test_no_number_setting_takes_infinity_nan_or_an_absurd_value(
    tmp_path: Path, path: KeyPath, value: str
) -> None:
    text = yaml.safe_dump(with_value(path, "VALUE"), sort_keys=False).replace("VALUE", value)
    file = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(file, environ={})
    (problem,) = info.value.problems
    line = next(n for n, text in enumerate(text.splitlines(), 1) if value in text)
    assert (problem.origin, problem.line) == (str(file), line)
    assert problem.path.startswith(shown(path))
    assert "at most" in problem.message or "less than" in problem.message
    assert problem.message.endswith(f"got {float(value.replace('.inf', 'inf').replace('.nan', 'nan')):g}")


def test_the_bounds_themselves_are_accepted() -> None:
    schema = Settings.model_json_schema()

    def bound(path: KeyPath, key: str) -> float | None:
        node: dict[str, Any] = schema
        for part in path:
            node = node["items"] if isinstance(part, int) else node["properties"][part]
            while "$ref" in node or "anyOf" in node:
                node = (
                    schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
                    if "$ref" in node
                    else next(option for option in node["anyOf"] if option.get("type") != "null")
                )
        value = node.get(key)
        return float(value) if value is not None else None

    for path in NUMBER_PATHS:
        for key in ("minimum", "maximum"):
            value = bound(path, key)
            if value is None:
                continue
            document = with_value(path, int(value) if value.is_integer() else value)
            if shown(path) in ("leader_election.renew_period_s", "leader_election.lease_duration_s"):
                continue  # bound to each other: a third
            if shown(path).endswith(("backoff_initial_s", "retry_initial_s")) and key == "maximum":
                continue  # at most the longest pause
            if shown(path).endswith(("backoff_max_s", "retry_max_s")) and key == "minimum":
                continue
            Settings.model_validate(document)


@pytest.mark.parametrize(("key", "text", "expected"), [
    ("interval_s", "interval_s: 0.000001\n",
     "expected a number of seconds at least 0.1 and at most 3600 (1 hour), got 1e-06"),
    ("interval_s", "interval_s: .inf\n",
     "expected a number of seconds at least 0.1 and at most 3600 (1 hour), got inf"),
    ("prometheus.timeout_s", "prometheus:\n  timeout_s: .inf\n",
     "expected a number of seconds at least 0.1 and at most 600, got inf"),
    ("defaults.policy.cooldown_s", "defaults:\n  policy:\n    cooldown_s: 1.0e+9\n",
     "expected a number of seconds at least 0 and at most 604800 (7 days), got 1000000000.0"),
    ("store.outbox_retention_s", "store:\n  outbox_retention_s: 400000000\n",
     "expected a number of seconds at least 1 and at most 31536000 (365 days), got 400000000"),
    ("defaults.slo.max_p95_ms", "defaults:\n  slo:\n    max_p95_ms: .nan\n",
     "expected a number of milliseconds greater than 0 and at most 3600000, got nan"),
])
def test_the_named_cases_say_file_line_key_and_bounds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    status, err = check_config(path, capsys)
    assert status == 2
    assert err == f"{path}:{text.count(chr(10))}: {key}: {expected}\n"


def test_the_environment_cannot_set_infinity(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, environ={"ROLLBACKD_INTERVAL_S": "inf"})
    assert str(info.value) == (
        "environment variable ROLLBACKD_INTERVAL_S: interval_s: expected a number of seconds at least 0.1"
        " and at most 3600 (1 hour), got 'inf'"
    )


def test_the_lease_message_shows_its_bound(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "leader_election:\n  lease_duration_s: 10\n  renew_period_s: 4\n")
    status, err = check_config(path, capsys)
    assert status == 2
    assert err == (
        f"{path}:3: leader_election.renew_period_s: must be at most lease_duration_s / 3 (3.33333): a leader"
        " needs two renewal attempts before it steps down\n"
    )


def test_a_window_may_not_span_more_intervals_than_memory_allows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, textwrap.dedent("""\
        interval_s: 0.1
        defaults:
          detection:
            window_s: 86400
        targets:
          - name: catalog
            strategy: deployment
            candidate: {deployment: catalog}
            detection: {baseline_window_s: 2000}
        """))
    status, err = check_config(path, capsys)
    assert status == 2
    assert err.splitlines() == [
        f"{path}:4: defaults.detection.window_s: spans 864000 intervals of interval_s (0.1): at most 10000,"
        " since every target keeps its window in memory; shorten the window or lengthen interval_s",
        f"{path}:9: targets[0].detection.baseline_window_s (target catalog): spans 20000 intervals of"
        " interval_s (0.1): at most 10000, since every target keeps its window in memory; shorten the window"
        " or lengthen interval_s",
    ]
    path.write_text(path.read_text().replace("interval_s: 0.1", "interval_s: 10"))
    assert check_config(path, capsys) == (0, "")


# --- files that are not configuration files ------------------------------------------------------------


LONG = "9" * 5000
TOO_LONG = "characters long: no setting takes a number that large (at most 32 characters)"


@pytest.mark.parametrize(("content", "expected"), [
    (f"interval_s: {LONG}\n",
     f":1:13: the integer is 5000 {TOO_LONG}"),
    (f"interval_s: 0x{'f' * 5000}\n",
     f":1:13: the integer is 5002 {TOO_LONG}"),
    ("interval_s: " + ":".join(["59"] * 2000) + "\n",
     f":1:13: the integer is 5999 {TOO_LONG}"),
    ("targets: " + "[" * 20000 + "]" * 20000 + "\n",
     ":1:1009: invalid YAML: exceeded maximum nesting depth (while increasing flow level at line 1,"
     " column 1009)"),
    ("x:\n" + "".join(" " * depth + "a:\n" for depth in range(1, 3000)),
     ":1000:1001: invalid YAML: exceeded maximum nesting depth (while increasing block level at line 1000,"
     " column 1001)"),
    ("targets: " + "[" * 500 + "]" * 500 + "\n",
     f":1:{9 + MAX_DEPTH}: mappings and lists nested deeper than {MAX_DEPTH} levels:"
     " not a configuration file"),
    ("interval_s: 2026-13-45\n", ":1:13: cannot read this value: month must be in 1..12"),
    (b"\x00\x01\x02\xff\xfe binary \x89PNG\r\n\x1a\n",
     ": not UTF-8 text (invalid start byte at byte 3): save the file as UTF-8"),
    ("interval_s: 10\n".encode("utf-16"),
     ": not UTF-8 text (invalid start byte at byte 0) (it looks like UTF-16): save the file as UTF-8"),
    ("a: &loop [*loop]\n",
     ":1: unknown key 'a' (known keys: interval_s, prometheus, health, http, log, safety, kubernetes,"
     " verification, store, events, leader_election, api, gitops, defaults, discovery, targets)"),
    ("targets: &loop [*loop]\n", ":1: targets[0]: expected a mapping, got a list"),
], ids=["5000-digit-int", "hex-int", "sexagesimal-int", "20000-deep-flow", "3000-deep-block", "500-deep",
        "no-such-date", "binary", "utf-16", "alias-loop", "alias-loop-targets"])
def test_files_that_are_no_configuration_give_one_clean_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | bytes, expected: str
) -> None:
    path = write(tmp_path, content)
    status, err = check_config(path, capsys)
    assert (status, err) == (2, f"{path}{expected}\n")


def test_a_billion_laughs_file_is_refused_quickly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, 10)]
    lines.append("targets: [*a9, *a9, *a9]")
    path = write(tmp_path, "\n".join(lines) + "\n")
    status, err = check_config(path, capsys)
    assert status == 2
    assert err.splitlines()[0] == (
        f"{path}:1: unknown key 'a0' (known keys: interval_s, prometheus, health, http, log, safety,"
        " kubernetes, verification, store, events, leader_election, api, gitops, defaults, discovery,"
        " targets)"
    )
    assert "Traceback" not in err


def test_a_huge_file_is_refused_without_reading_it_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "rollbackd.yaml"
    with path.open("wb") as out:
        out.write(b"interval_s: 10\n")
        out.truncate(MAX_FILE_BYTES + 1)  # sparse: the size is what counts
    status, err = check_config(path, capsys)
    assert (status, err) == (
        2,
        f"{path}: the file is larger than 16 MiB: not a configuration file (split the targets among"
        " several daemons)\n",
    )


def test_deep_json_in_the_environment_is_a_clean_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, environ={"ROLLBACKD_TARGETS": "[" * 20000 + "]" * 20000})
    assert str(info.value) == (
        "environment variable ROLLBACKD_TARGETS: targets: expected a list of mappings written as JSON,"
        f" got JSON nested deeper than {MAX_DEPTH} levels"
    )


def test_a_long_value_is_shortened_in_the_message() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, environ={"ROLLBACKD_TARGETS": f"[{'9' * 4000}]"})
    assert str(info.value) == (
        "environment variable ROLLBACKD_TARGETS: targets[0]: expected a mapping, got a whole number with more"
        " than 19 digits"
    )


# --- the property: any file gives settings or a clean error --------------------------------------------

#: Keys the generated documents draw from: real ones (so that generated files reach deep into
#: the model) and a few that are not.
KEYS = sorted({str(part) for path in NUMBER_PATHS for part in path if isinstance(part, str)} | {
    "targets", "name", "strategy", "candidate", "baseline", "deployment", "ingress", "labels", "health",
    "url", "webhooks", "enabled", "dry_run", "freeze", "queries", "group_labels", "<<", "nope",
})

SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.sampled_from([
        ".inf", "-.inf", ".nan", "1e400", "9" * 5000, "0x" + "f" * 40, "2026-13-45", "~", "''", "canary",
        "deployment", "blue-green", "http://x", "*a", "&a", "!!python/object:os.system",
    ])
)

VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(KEYS), children, max_size=5)
    ),
    max_leaves=25,
)

EXAMPLE_LINES = EXAMPLE.read_text(encoding="utf-8").splitlines()


@st.composite
def mutated_example(draw: st.DrawFn) -> str:
    """The example file with a few lines changed: a value replaced, a line dropped, repeated,
    re-indented or cut short."""
    lines = list(EXAMPLE_LINES)
    for _ in range(draw(st.integers(1, 4))):
        index = draw(st.integers(0, len(lines) - 1))
        line = lines[index]
        how = draw(st.sampled_from(["value", "drop", "repeat", "indent", "cut", "garbage"]))
        if how == "value" and ":" in line:
            key = line.split(":", 1)[0]
            value = draw(SCALARS)
            lines[index] = f"{key}: {value if isinstance(value, str) else json.dumps(value)}"
        elif how == "drop":
            del lines[index]
        elif how == "repeat":
            lines.insert(index, line)
        elif how == "indent":
            lines[index] = " " * draw(st.integers(0, 8)) + line.lstrip()
        elif how == "cut":
            lines[index] = line[: draw(st.integers(0, len(line)))]
        else:
            lines[index] = draw(st.text(max_size=30))
        if not lines:
            break
    return "\n".join(lines) + "\n"


DOCUMENTS = (
    st.builds(lambda value: yaml.safe_dump(value, sort_keys=False), VALUES)
    | st.builds(
        lambda doc: yaml.safe_dump(doc, sort_keys=False), st.dictionaries(st.sampled_from(KEYS), VALUES)
    )
    | mutated_example()
    | st.text(max_size=200)
    | st.binary(max_size=200)
)


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(item) for item in value.values())
    if isinstance(value, list | tuple):
        return all(_finite(item) for item in value)
    return True


@pytest.mark.faults
def test_any_file_gives_settings_or_a_clean_error(tmp_path: Path, fault_ledger: FaultLedger) -> None:
    path = tmp_path / "rollbackd.yaml"
    outcomes = {"settings": 0, "errors": 0}

    @settings(max_examples=400)
    @given(DOCUMENTS)
    def check(document: str | bytes) -> None:
        fault_ledger.inputs(1)
        if isinstance(document, bytes):
            path.write_bytes(document)
        else:
            path.write_text(document, encoding="utf-8", errors="surrogatepass")
        started = time.monotonic()
        refused: ConfigError | None = None
        try:
            loaded = load_settings(path, environ={})
        except ConfigError as exc:
            outcomes["errors"] += 1
            refused = exc
        except Exception:
            fault_ledger.observe(crashes=1)
            raise
        else:
            outcomes["settings"] += 1
            if not _finite(loaded.model_dump()):
                fault_ledger.observe(actions_on_bad_data=1)
            assert _finite(loaded.model_dump())
        if refused is not None:
            assert refused.problems
            assert all(problem.origin == str(path) for problem in refused.problems)
        assert time.monotonic() - started < 10.0, "loading one small file must not take long"

    check()
    print(f"\nconfiguration loader: {fault_ledger.inputs_tried} files, {outcomes['settings']} loaded, "
          f"{outcomes['errors']} refused with a clean error, {fault_ledger.crashes} crashes")
    assert fault_ledger.crashes == 0
    assert fault_ledger.actions_on_bad_data == 0
    assert outcomes["errors"] > 0
    assert outcomes["settings"] > 0


def test_the_example_file_dumped_back_loads_the_same() -> None:
    """The generator's starting point is a valid file (so mutations explore near-valid files)."""
    loaded = load_settings(EXAMPLE, environ={})
    assert Settings.model_validate(yaml.safe_load(textwrap.dedent(EXAMPLE.read_text()))) == loaded


# --- the documentation -----------------------------------------------------------------------------------

CONFIGURATION_DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def _doc_name(path: KeyPath) -> str:
    """A setting as docs/configuration.md names it: ``slo.max_p95_ms`` for defaults and targets alike."""
    name = shown(path).replace("[0]", "[]")
    for prefix in ("defaults.", "targets[]."):
        name = name.removeprefix(prefix)
    return name


def _written(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def test_the_bounds_table_matches_the_settings() -> None:
    rows: dict[str, str] = {}
    for line in CONFIGURATION_DOC.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`") and cells[0].endswith("`"):
            rows[cells[0].strip("`")] = cells[2]
    missing: list[str] = []
    wrong: list[str] = []
    for path in NUMBER_PATHS:
        name = _doc_name(path)
        if name not in rows:
            missing.append(name)
            continue
        field = Settings.model_json_schema()  # bounds from the schema the users see
        node: dict[str, Any] = field
        for part in path:
            node = node["items"] if isinstance(part, int) else node["properties"][part]
            while "$ref" in node or "anyOf" in node:
                node = (
                    field["$defs"][node["$ref"].rsplit("/", 1)[1]]
                    if "$ref" in node
                    else next(option for option in node["anyOf"] if option.get("type") != "null")
                )
        for key in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
            if key in node and _written(node[key]) not in rows[name]:
                wrong.append(f"{name}: {key} {node[key]} not in {rows[name]!r}")
    assert missing == []
    assert wrong == []


def test_the_readme_links_the_bounds() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert "(docs/configuration.md)" in readme
