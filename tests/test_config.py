"""Loading the configuration file and the environment, the messages a user gets when it is
wrong, and resolving settings into the values the core and the sources use."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from rollbackd.config.loader import ConfigError, Problem, load_settings, resolve_config_path
from rollbackd.config.presets import PRESETS, preset_names
from rollbackd.config.resolve import default_params, target_params
from rollbackd.config.settings import Settings, TargetSettings, template_problem
from rollbackd.knobs import knobs
from rollbackd.model import Risk, Slo, Strategy
from rollbackd.params import Detection, Policy, Severity, TargetParams
from rollbackd.sources.base import SeriesRef
from rollbackd.sources.targets import source_target, source_targets

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "rollbackd.example.yaml"

CANARY = """\
targets:
  - name: checkout
    namespace: shop
    strategy: canary
    ingress: checkout-canary
    baseline:
      deployment: checkout
    candidate:
      deployment: checkout-canary
"""


def write(tmp_path: Path, text: str, name: str = "rollbackd.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path | None, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ=environ or {})
    lines = str(info.value).splitlines()
    assert len(lines) == len(info.value.problems)
    return lines


def line_of(path: Path, needle: str) -> int:
    """The 1-based line of the first line of ``path`` containing ``needle``."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


# --- the example file -----------------------------------------------------------------------


def test_example_file_loads_with_five_targets_in_shop() -> None:
    settings = load_settings(EXAMPLE, environ={})
    assert [(t.key, t.strategy) for t in settings.targets] == [
        ("shop/checkout", Strategy.CANARY),
        ("shop/cart", Strategy.CANARY),
        ("shop/search", Strategy.CANARY),
        ("shop/payments", Strategy.BLUE_GREEN),
        ("shop/catalog", Strategy.DEPLOYMENT),
    ]


def test_example_file_values_are_the_defaults_it_claims() -> None:
    settings = load_settings(EXAMPLE, environ={})
    assert settings.defaults == Settings().defaults
    assert settings.model_dump(exclude={"targets"}) == Settings().model_dump(exclude={"targets"})


def _setting_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths.extend(_setting_paths(annotation, (*prefix, name)))
        else:
            paths.append((*prefix, name))
    return paths


def test_example_file_shows_every_setting() -> None:
    raw = yaml.safe_load(EXAMPLE.read_text())
    missing = []
    absent = object()
    for path in _setting_paths(Settings):
        node: Any = raw
        for key in path:
            node = node.get(key, absent) if isinstance(node, dict) else absent
        if node is absent:
            missing.append(".".join(path))
    assert missing == []


# --- good files -----------------------------------------------------------------------------


def test_good_file_is_loaded(tmp_path: Path) -> None:
    path = write(tmp_path, textwrap.dedent("""\
        interval_s: 5
        prometheus:
          url: http://127.0.0.1:9090
        log: {level: debug, format: text}
        defaults:
          slo: {max_error_rate: 0.02}
        """) + CANARY)
    settings = load_settings(path, environ={})
    assert settings.interval_s == 5.0
    assert settings.prometheus.url == "http://127.0.0.1:9090"
    assert settings.prometheus.timeout_s == 5.0
    assert settings.log.level == "DEBUG"
    assert settings.log.format == "text"
    assert settings.defaults.slo.max_error_rate == 0.02
    assert settings.defaults.slo.max_p95_ms == 500.0
    (target,) = settings.targets
    assert target.key == "shop/checkout"
    assert target.ingress == "checkout-canary"


@pytest.mark.parametrize("text", ["", "\n", "# nothing configured yet\n", "---\n"])
def test_empty_file_means_all_defaults(tmp_path: Path, text: str) -> None:
    assert load_settings(write(tmp_path, text), environ={}) == Settings()


def test_no_file_means_defaults(tmp_path: Path) -> None:
    assert load_settings(None, environ={}) == Settings()


def test_resolve_config_path_prefers_the_argument_then_the_environment() -> None:
    environ = {"ROLLBACKD_CONFIG": "/etc/rollbackd/config.yaml"}
    assert resolve_config_path("mine.yaml", environ=environ) == Path("mine.yaml")
    assert resolve_config_path(None, environ=environ) == Path("/etc/rollbackd/config.yaml")
    assert resolve_config_path(None, environ={}) is None
    assert resolve_config_path(None, environ={"ROLLBACKD_CONFIG": ""}) is None


# --- environment overrides ------------------------------------------------------------------


def test_environment_overrides_nested_keys_and_beats_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        interval_s: 20
        prometheus:
          url: http://127.0.0.1:9090
          timeout_s: 3
        safety:
          dry_run: false
        """)
    settings = load_settings(path, environ={
        "ROLLBACKD_PROMETHEUS__URL": "http://127.0.0.1:19090",
        "ROLLBACKD_SAFETY__DRY_RUN": "true",
        "ROLLBACKD_INTERVAL_S": "5",
        "ROLLBACKD_DEFAULTS__SLO__MAX_ERROR_RATE": "0.025",
        "ROLLBACKD_DEFAULTS__POLICY__MAX_ROLLBACKS_PER_HOUR": "7",
        "ROLLBACKD_LOG__LEVEL": "warning",
        "PATH": "/usr/bin",
    })
    assert settings.prometheus.url == "http://127.0.0.1:19090"
    assert settings.prometheus.timeout_s == 3.0  # the file's, untouched by the override next to it
    assert settings.safety.dry_run is True
    assert settings.interval_s == 5.0
    assert settings.defaults.slo.max_error_rate == 0.025
    assert settings.defaults.slo.max_p95_ms == 500.0
    assert settings.defaults.policy.max_rollbacks_per_hour == 7
    assert settings.log.level == "WARNING"


def test_environment_names_are_case_insensitive_and_empty_values_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "interval_s: 20\nsafety: {freeze: true}\n")
    settings = load_settings(path, environ={"rollbackd_interval_s": "7", "ROLLBACKD_SAFETY__FREEZE": ""})
    assert settings.interval_s == 7.0
    assert settings.safety.freeze is True


def test_environment_variables_naming_no_setting_are_ignored() -> None:
    # Kubernetes injects these into pods next to a Service called "rollbackd".
    environ = {
        "ROLLBACKD_SERVICE_HOST": "10.0.0.1",
        "ROLLBACKD_PORT": "tcp://10.0.0.1:8080",
        "ROLLBACKD_PORT_8080_TCP_ADDR": "10.0.0.1",
        "ROLLBACKD_CONFIG": "/nonexistent.yaml",
    }
    assert load_settings(None, environ=environ) == Settings()


def test_environment_can_replace_whole_sections_as_json() -> None:
    settings = load_settings(None, environ={
        "ROLLBACKD_TARGETS": '[{"name": "catalog", "namespace": "shop", "strategy": "deployment",'
        ' "candidate": {"deployment": "catalog", "labels": {"cluster": "eu-1"}}}]',
        "ROLLBACKD_DEFAULTS__QUERIES__GROUP_LABELS": '["namespace", "deployment", "cluster"]',
        "ROLLBACKD_HEALTH": '{"timeout_s": 0.5}',
    })
    assert [t.key for t in settings.targets] == ["shop/catalog"]
    assert settings.health.timeout_s == 0.5
    assert settings.defaults.queries.group_labels == ("namespace", "deployment", "cluster")


def test_invalid_environment_value_names_the_variable(tmp_path: Path) -> None:
    lines = problems_of(write(tmp_path, "safety: {dry_run: false}\n"), {"ROLLBACKD_SAFETY__DRY_RUN": "maybe"})
    assert lines == [
        "environment variable ROLLBACKD_SAFETY__DRY_RUN: safety.dry_run: expected true or false, got 'maybe'"
    ]


def test_unknown_environment_key_is_reported_with_a_suggestion() -> None:
    (line,) = problems_of(None, {"ROLLBACKD_PROMETHEUS__URLL": "http://127.0.0.1:9090"})
    assert line.startswith("environment variable ROLLBACKD_PROMETHEUS__URLL: prometheus:")
    assert "unknown key 'urll' — did you mean 'url'?" in line


def test_invalid_json_in_the_environment_is_reported() -> None:
    (line,) = problems_of(None, {"ROLLBACKD_TARGETS": "[{name: checkout}]"})
    assert line.startswith(
        "environment variable ROLLBACKD_TARGETS: targets: expected a list of mappings written as JSON"
    )


def test_problems_in_targets_given_by_the_environment_name_the_variable() -> None:
    lines = problems_of(None, {
        "ROLLBACKD_TARGETS": '[{"name": "checkout", "strategy": "canary", "candidate": {"deployment": "c"}}]',
    })
    assert lines == [
        "environment variable ROLLBACKD_TARGETS: targets[0] (checkout): missing required key 'baseline'"
        " for strategy 'canary' (the version to go back to)",
        "environment variable ROLLBACKD_TARGETS: targets[0] (checkout): missing required key 'router'"
        " for strategy 'canary' (how traffic reaches the canary: router: {kind: ingress-nginx | "
        "gateway-api | istio,"
        " ...}, or the shorthand ingress: NAME for an ingress-nginx canary Ingress)",
    ]


# --- YAML and file errors -------------------------------------------------------------------


def test_yaml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        interval_s: 10
        prometheus:
          url: http://127.0.0.1: 9090
          timeout_s: 5
        """)
    (line,) = problems_of(path)
    assert line.startswith(f"{path}:3:24: invalid YAML: mapping values are not allowed here. Hint: line 3 ")


def test_yaml_syntax_error_mentions_where_the_construct_began(tmp_path: Path) -> None:
    path = write(tmp_path, "interval_s: 10\nsafety\nhttp: {port: 8080}\n")
    assert problems_of(path) == [
        f"{path}:3:1: invalid YAML: could not find expected ':'"
        " (while scanning a simple key at line 2, column 1)"
    ]


def test_several_yaml_documents_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "interval_s: 10\n---\ninterval_s: 20\n")
    (line,) = problems_of(path)
    assert line.startswith(f"{path}:2:1: invalid YAML:")
    assert "single document" in line


@pytest.mark.parametrize(("text", "got"), [
    ("- interval_s: 10\n", "a list"),
    ("just words\n", "'just words'"),
    ("42\n", "42"),
])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, got: str) -> None:
    path = write(tmp_path, text)
    assert problems_of(path) == [
        f"{path}:1: the top level must be a mapping of settings (like 'interval_s: 10'), got {got}"
    ]


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    assert problems_of(path) == [f"{path}: cannot read the configuration file: No such file or directory"]


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    (line,) = problems_of(tmp_path)  # a directory
    assert line.startswith(f"{tmp_path}: cannot read the configuration file:")


def test_non_utf8_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("log: {level: 'INFO'}  # caf\xe9\n".encode("latin-1"))
    (line,) = problems_of(path)
    assert line.startswith(f"{path}: not UTF-8 text")


def test_repeated_yaml_key_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        prometheus:
          url: http://127.0.0.1:9090
          timeout_s: 1
          url: http://127.0.0.1:9091
        """)
    assert problems_of(path) == [
        f"{path}:4: prometheus: key 'url' is repeated (first at line 2); only the last one would count"
    ]


def test_yaml_anchors_and_merge_keys_work(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        targets:
          - &checkout
            name: checkout
            namespace: shop
            strategy: canary
            ingress: checkout-canary
            baseline: {deployment: checkout}
            candidate: {deployment: checkout-canary}
          - <<: *checkout
            name: checkout-eu
            slo: {max_error_rate: 0.5}
          - <<: *checkout
            name: checkout-us
            slo: {max_error_rate: 2}
        """)
    assert problems_of(path) == [
        f"{path}:14: targets[2].slo.max_error_rate (target checkout-us):"
        " expected a number greater than 0 and less than 1, got 2"
    ]
    path.write_text(path.read_text().replace("max_error_rate: 2", "max_error_rate: 0.2"))
    settings = load_settings(path, environ={})
    assert [(t.key, t.ingress, t.slo.max_error_rate) for t in settings.targets] == [
        ("shop/checkout", "checkout-canary", None),
        ("shop/checkout-eu", "checkout-canary", 0.5),
        ("shop/checkout-us", "checkout-canary", 0.2),
    ]


# --- validation errors, in the file's terms ---------------------------------------------------


def test_unknown_key_has_path_line_and_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, CANARY + "    slos:\n      max_error_rate: 0.02\n")
    assert problems_of(path) == [
        f"{path}:{line_of(path, 'slos:')}: targets[0] (checkout): unknown key 'slos' — did you mean 'slo'?"
    ]


def test_unknown_top_level_key_lists_suggestions(tmp_path: Path) -> None:
    path = write(tmp_path, "interval: 5\nprometeus: {}\n")
    assert problems_of(path) == [
        f"{path}:1: unknown key 'interval' — did you mean 'interval_s'?",
        f"{path}:2: unknown key 'prometeus' — did you mean 'prometheus'?",
    ]


def test_unknown_key_without_close_match_lists_the_known_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "safety:\n  panic_button: true\n")
    assert problems_of(path) == [
        f"{path}:2: safety: unknown key 'panic_button' (known keys: dry_run, freeze, switches_poll_s, "
        "switches, switches_configmap)"
    ]


def test_wrong_type_has_path_line_and_expectation(tmp_path: Path) -> None:
    path = write(tmp_path, CANARY + "    slo:\n      max_error_rate: abc\n")
    assert problems_of(path) == [
        f"{path}:{line_of(path, 'max_error_rate')}: targets[0].slo.max_error_rate (target checkout):"
        " expected a number greater than 0 and less than 1, got 'abc'"
    ]


@pytest.mark.parametrize(("text", "key", "expected"), [
    ("interval_s: 0\n", "interval_s",
     "expected a number of seconds at least 0.1 and at most 3600 (1 hour), got 0"),
    ("safety: {dry_run: maybe}\n", "safety.dry_run", "expected true or false, got 'maybe'"),
    ("defaults:\n  detection:\n    confirm_intervals: 1\n", "defaults.detection.confirm_intervals",
     "expected a whole number at least 2 and at most 1000, got 1"),
    ("defaults:\n  detection:\n    min_requests: 2.5\n", "defaults.detection.min_requests",
     "expected a whole number at least 1 and at most 1000000000, got 2.5"),
    ("defaults:\n  policy:\n    rollback_risk: medium\n", "defaults.policy.rollback_risk",
     "expected one of 'low', 'high', got 'medium'"),
    ("defaults:\n  queries:\n    group_labels: []\n", "defaults.queries.group_labels",
     "expected a non-empty list of label names, got an empty list"),
    ("http:\n  port: 70000\n", "http.port",
     "expected a whole number at least 0 and at most 65535, got 70000"),
    ("prometheus:\n  url: prometheus:9090\n", "prometheus.url",
     "expected a URL starting with http:// or https://, got 'prometheus:9090'"),
    ("prometheus:\n  timeout_s:\n", "prometheus.timeout_s",
     "expected a number of seconds at least 0.1 and at most 600, got nothing (null)"),
    ("log: debug\n", "log", "expected a mapping, got 'debug'"),
    ("targets: {}\n", "targets", "expected a list of mappings, got an empty mapping"),
])
def test_wrong_values_say_what_is_expected(tmp_path: Path, text: str, key: str, expected: str) -> None:
    path = write(tmp_path, text)
    line = line_of(path, key.rsplit(".", 1)[-1] + ":")
    assert problems_of(path) == [f"{path}:{line}: {key}: {expected}"]


def test_bad_target_names_and_strategies(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        targets:
          - name: Checkout
            strategy: rolling
            candidate: {deployment: checkout}
        """)
    assert problems_of(path) == [
        f"{path}:2: targets[0].name (target Checkout): expected a name of lowercase letters, digits and '-'"
        " (like a Kubernetes object name), got 'Checkout'",
        f"{path}:3: targets[0].strategy (target Checkout): expected one of 'canary', 'blue-green',"
        " 'deployment', 'argo-rollout', 'command', 'config', 'feature-flag', got 'rolling'",
    ]


def test_target_without_candidate(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        targets:
          - name: catalog
            namespace: shop
            strategy: deployment
        """)
    assert problems_of(path) == [
        f"{path}:2: targets[0] (catalog): missing required key 'candidate' (the new version being judged)"
    ]


def test_target_without_name_or_strategy(tmp_path: Path) -> None:
    path = write(tmp_path, "targets:\n  - candidate: {deployment: catalog}\n")
    assert problems_of(path) == [
        f"{path}:2: targets[0]: missing required key 'name' (the target's name, unique within its namespace)",
        f"{path}:2: targets[0]: missing required key 'strategy'"
        " (how the release is rolled out: canary, blue-green, deployment, argo-rollout, command, config or"
        " feature-flag)",
    ]


def test_canary_without_ingress(tmp_path: Path) -> None:
    path = write(tmp_path, CANARY.replace("    ingress: checkout-canary\n", ""))
    assert problems_of(path) == [
        f"{path}:2: targets[0] (checkout): missing required key 'router' for strategy 'canary'"
        " (how traffic reaches the canary: router: {kind: ingress-nginx | gateway-api | istio, ...}, or the"
        " shorthand ingress: NAME for an ingress-nginx canary Ingress)"
    ]


def test_blue_green_without_service_or_baseline(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        targets:
          - name: payments
            strategy: blue-green
            candidate: {deployment: payments-green}
        """)
    assert problems_of(path) == [
        f"{path}:2: targets[0] (payments): missing required key 'baseline' for strategy 'blue-green'"
        " (the version to go back to)",
        f"{path}:2: targets[0] (payments): missing required key 'service' for strategy 'blue-green'"
        " (the Service whose selector picks the colour)",
    ]


def test_keys_of_another_strategy_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        targets:
          - name: catalog
            strategy: deployment
            candidate: {deployment: catalog}
            baseline: {deployment: catalog-old}
            ingress: catalog
        """)
    assert problems_of(path) == [
        f"{path}:5: targets[0].baseline (target catalog): key 'baseline' does not apply to strategy"
        " 'deployment' (only to argo-rollout, blue-green and canary)",
        f"{path}:6: targets[0].ingress (target catalog): key 'ingress' does not apply to strategy"
        " 'deployment' (only to canary)",
    ]


def test_an_argo_rollout_target_tells_its_sides_apart_by_labels(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        targets:
          - name: checkout
            namespace: shop
            strategy: argo-rollout
            rollout: checkout
            baseline: {labels: {role: stable}}
            candidate: {labels: {role: canary}}
            queries: {group_labels: [namespace, role]}
        """)
    settings = load_settings(path, environ={})
    [target] = settings.targets
    assert target.strategy is Strategy.ARGO_ROLLOUT
    assert (target.rollout, target.candidate.deployment) == ("checkout", None)


def test_argo_rollout_mistakes_say_what_to_write_instead(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        targets:
          - name: checkout
            strategy: argo-rollout
            baseline: {labels: {role: stable}}
            candidate: {deployment: checkout, labels: {role: canary}}
          - name: cart
            strategy: canary
            ingress: cart-canary
            baseline: {deployment: cart}
            candidate: {labels: {}}
        """)
    assert problems_of(path) == [
        f"{path}:2: targets[0] (checkout): missing required key 'rollout' for strategy 'argo-rollout'"
        " (the Argo Rollouts Rollout)",
        f"{path}:5: targets[0].candidate.deployment (target checkout): key 'deployment' does not apply to"
        " strategy 'argo-rollout': the pods of both versions belong to the Rollout: tell the sides apart with"
        " labels (e.g. role: canary / role: stable, set by the Rollout's canaryMetadata / stableMetadata)",
        f"{path}:10: targets[1].candidate (target cart): missing required key 'deployment' for strategy"
        " 'canary' (the Deployment running this version)",
    ]
    path = write(tmp_path, """\
        targets:
          - name: search
            strategy: argo-rollout
            rollout: search
            baseline: {labels: {role: stable}}
            candidate: {labels: {role: canary}}
        """)
    assert problems_of(path) == [
        f"{path}:2: targets[0] (search): group label 'deployment' has no value for an argo-rollout target:"
        " the pods of both versions belong to the Rollout: tell the sides apart with labels (e.g. role:"
        " canary / role: stable, set by the Rollout's canaryMetadata / stableMetadata); set this target's"
        " queries.group_labels to them (e.g. [namespace, role])",
    ]


def test_duplicate_targets(tmp_path: Path) -> None:
    path = write(tmp_path, CANARY + """\
          - name: checkout
            namespace: other
            strategy: deployment
            candidate: {deployment: checkout}
          - name: checkout
            namespace: shop
            strategy: deployment
            candidate: {deployment: checkout}
        """.replace("          ", "  "))
    assert problems_of(path) == [
        f"{path}:14: targets[2] (checkout): target shop/checkout is listed twice (first as targets[0])"
    ]


def test_group_labels_need_a_value_on_each_side(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        defaults:
          queries:
            group_labels: [namespace, app, track]
        targets:
          - name: checkout
            strategy: canary
            ingress: checkout-canary
            baseline:
              deployment: checkout
              labels: {app: checkout, track: stable}
            candidate:
              deployment: checkout-canary
              labels: {app: checkout, version: v2}
        """)
    assert problems_of(path) == [
        f"{path}:13: targets[0].candidate.labels (target checkout): missing value for group label 'track'"
        " (queries.group_labels is namespace, app, track)",
        f"{path}:13: targets[0].candidate.labels.version (target checkout): label 'version' is not a group"
        " label (queries.group_labels is namespace, app, track) and would be ignored",
    ]


def test_sides_must_select_different_series(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        targets:
          - name: checkout
            strategy: canary
            ingress: checkout-canary
            baseline: {deployment: checkout}
            candidate: {deployment: checkout}
        """)
    (line,) = problems_of(path)
    assert line.startswith(
        f"{path}:6: targets[0].candidate (target checkout): baseline and candidate select the same series"
    )


def test_namespace_and_deployment_cannot_be_set_as_labels(tmp_path: Path) -> None:
    path = write(tmp_path, CANARY + "      labels: {namespace: prod}\n")
    assert problems_of(path) == [
        f"{path}:10: targets[0].candidate.labels.namespace (target checkout): label 'namespace' cannot be set"
        " here: its value is the target's 'namespace'"
    ]


def test_broken_promql_templates(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        defaults:
          queries:
            requests: 'sum(increase(http_requests_total[{window}]))'
            errors: 'sum by ({by}) (increase(errors_total{{{selector}}}[{windw}]))'
        """)
    assert problems_of(path) == [
        f"{path}:3: defaults.queries.requests: PromQL template lacks the placeholder {{selector}},"
        " which rollbackd fills in to tell the series apart",
        f"{path}:4: defaults.queries.errors: PromQL template has an unknown placeholder {{windw}}:"
        " templates may use {selector}, {by} and {window} (write {{ and }} for literal braces)",
    ]


@pytest.mark.parametrize("name", preset_names())
def test_template_problem_accepts_every_preset(name: str) -> None:
    queries = PRESETS[name]
    templates = (queries.requests, queries.errors, queries.latency_buckets)
    assert [template_problem(template) for template in templates] == [None, None, None]
    assert template_problem("x{") is not None


def test_all_problems_are_listed_in_file_order(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        interval_s: -1
        prometheus:
          retries: many
        targets:
          - name: checkout
            strategy: canary
            candidate: {deployment: checkout-canary}
            slo: {max_p95_ms: 0}
        """)
    lines = problems_of(path, {"ROLLBACKD_SAFETY__FREEZE": "sometimes"})
    assert [line.split(": ", 2)[:2] for line in lines] == [
        [f"{path}:1", "interval_s"],
        [f"{path}:3", "prometheus.retries"],
        [f"{path}:8", "targets[0].slo.max_p95_ms (target checkout)"],
        ["environment variable ROLLBACKD_SAFETY__FREEZE", "safety.freeze"],
    ]


def test_config_error_carries_structured_problems(tmp_path: Path) -> None:
    path = write(tmp_path, "interval_s: soon\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert info.value.problems == (
        Problem(
            str(path),
            "expected a number of seconds at least 0.1 and at most 3600 (1 hour), got 'soon'",
            path="interval_s",
            line=1,
        ),
    )


def test_settings_validators_also_guard_programmatic_construction() -> None:
    target = {"name": "a", "strategy": "deployment", "candidate": {"deployment": "a"}}
    with pytest.raises(ValidationError) as info:
        Settings.model_validate({"targets": [target, target]})
    assert [error["loc"] for error in info.value.errors()] == [("targets", 1)]


# --- resolving settings -----------------------------------------------------------------------


OVERRIDES = """\
interval_s: 15
defaults:
  slo: {max_error_rate: 0.02, max_p95_ms: 400}
  severity: {error_rate_factor: 4}
  detection: {window_s: 90, min_requests: 100}
  policy: {controlled_grace_s: 200, cooldown_s: 900, max_rollbacks_per_hour: 5, rollback_risk: low}
  queries:
    group_labels: [namespace, app, track]
    errors: 'sum by ({by}) (increase(http_errors_total{{{selector}}}[{window}]))'
targets:
  - name: checkout
    namespace: shop
    strategy: canary
    ingress: checkout-canary
    baseline:
      deployment: checkout
      labels: {app: checkout, track: stable}
      health: [http://127.0.0.1:8081/healthz]
    candidate:
      deployment: checkout-canary
      labels: {app: checkout, track: canary}
      health: [http://127.0.0.1:8082/healthz, http://127.0.0.1:8082/readyz]
    slo: {max_p95_ms: 250}
    detection: {min_requests: 20}
    policy: {rollback_risk: high, cooldown_s: 60}
    queries:
      requests: 'sum by ({by}) (rate(requests_total{{{selector}}}[{window}]))'
  - name: catalog
    namespace: shop
    strategy: deployment
    candidate:
      deployment: catalog
      labels: {app: catalog, track: stable}
      health: [http://127.0.0.1:8083/healthz]
    queries:
      group_labels: [namespace, deployment]
"""


@pytest.fixture
def overridden(tmp_path: Path) -> Settings:
    text = OVERRIDES.replace("labels: {app: catalog, track: stable}", "labels: {}")
    return load_settings(write(tmp_path, text), environ={})


def test_target_params_merge_defaults_with_target_overrides(overridden: Settings) -> None:
    checkout = overridden.targets[0]
    params = target_params(overridden, checkout)
    assert params.key == "shop/checkout"
    assert params.strategy is Strategy.CANARY
    assert params.interval_s == 15.0
    assert (params.slo.max_error_rate, params.slo.max_p95_ms) == (0.02, 250.0)
    assert params.severity.error_rate_factor == 4.0
    assert params.severity.p95_factor == 2.0
    assert (params.detection.window_s, params.detection.min_requests) == (90.0, 20)
    assert params.detection.confirm_intervals == 2
    assert params.policy.controlled_grace_s == 200.0
    assert params.policy.cooldown_s == 60.0
    assert params.policy.max_rollbacks_per_hour == 5
    assert params.policy.rollback_risk is Risk.HIGH


def test_target_params_without_overrides_are_the_defaults(overridden: Settings) -> None:
    catalog = overridden.targets[1]
    params = target_params(overridden, catalog)
    assert params.slo.max_p95_ms == 400.0
    assert params.detection.min_requests == 100
    assert params.policy.rollback_risk is Risk.LOW
    assert params.policy.cooldown_s == 900.0
    assert default_params(overridden, key=params.key, strategy=params.strategy) == params


def test_default_params_of_default_settings_match_the_core_defaults() -> None:
    expected = TargetParams(key="defaults", strategy=Strategy.CANARY, interval_s=10.0)
    assert default_params(Settings()) == expected


#: A valid value other than the default for every tunable of the core, by section.
NON_DEFAULT: dict[str, dict[str, Any]] = {
    "slo": {"max_error_rate": 0.03, "max_p95_ms": 750.0},
    "severity": {"error_rate_factor": 8.0, "p95_factor": 3.0, "health_failure_severe": False},
    "detection": {
        "window_s": 120.0,
        "baseline_window_s": 900.0,
        "confirm_intervals": 4,
        "confidence": 0.95,
        "min_requests": 10,
        "min_latency_samples": 20,
        "attribution_ratio": 2.5,
        "alpha": 0.05,
        "anytime": False,
    },
    "policy": {
        "controlled_grace_s": 30.0,
        "cooldown_s": 60.0,
        "max_rollbacks_per_hour": 9,
        "rollback_risk": "high",
        "accept_after_s": 3600.0,
    },
}
_SECTIONS = {"slo": Slo, "severity": Severity, "detection": Detection, "policy": Policy}


def test_every_tunable_is_settable_in_defaults_and_reaches_the_core(tmp_path: Path) -> None:
    """Each tunable the core declares is a setting of ``defaults`` that the core receives; the
    table above must name every one, so a new tunable cannot go untested."""
    for section, cls in _SECTIONS.items():
        assert set(NON_DEFAULT[section]) == {item.name for item, _ in knobs(cls)}, section
        assert all(value != getattr(cls(), key) for key, value in NON_DEFAULT[section].items())
    settings = load_settings(write(tmp_path, yaml.safe_dump({"defaults": NON_DEFAULT})), environ={})
    params = default_params(settings)
    for section, values in NON_DEFAULT.items():
        got = getattr(params, section)
        for key, value in values.items():
            assert getattr(got, key) == (Risk(value) if key == "rollback_risk" else value), (section, key)


def test_per_target_tunables_override_defaults_and_global_ones_are_refused(tmp_path: Path) -> None:
    """A target overrides any per-target tunable for itself only; severity and the hourly cap are
    global, and setting them on a target names the keys it may set instead."""
    overridable = {
        section: {key: value for key, value in values.items() if key != "max_rollbacks_per_hour"}
        for section, values in NON_DEFAULT.items()
        if section != "severity"
    }
    document = yaml.safe_load(CANARY)
    other = {**document["targets"][0], "name": "search", "ingress": "search-canary"}
    document["targets"] = [{**document["targets"][0], **overridable}, other]
    settings = load_settings(write(tmp_path, yaml.safe_dump(document)), environ={})
    changed, untouched = (target_params(settings, target) for target in settings.targets)
    assert untouched == default_params(settings, key="shop/search", strategy=Strategy.CANARY)
    for section, values in overridable.items():
        for key, value in values.items():
            expected = Risk(value) if key == "rollback_risk" else value
            assert getattr(getattr(changed, section), key) == expected, (section, key)
    assert changed.severity == untouched.severity
    assert changed.policy.max_rollbacks_per_hour == untouched.policy.max_rollbacks_per_hour

    document["targets"] = [
        {**document["targets"][0], "policy": {"max_rollbacks_per_hour": 9}, "severity": {"p95_factor": 3}}
    ]
    path = write(tmp_path, yaml.safe_dump(document))
    assert problems_of(path) == [
        f"{path}:{line_of(path, 'max_rollbacks_per_hour:')}: targets[0].policy (target checkout): unknown key"
        " 'max_rollbacks_per_hour' (known keys: controlled_grace_s, cooldown_s, rollback_risk,"
        " accept_after_s)",
        f"{path}:{line_of(path, 'severity:')}: targets[0] (checkout): unknown key 'severity' (known keys:"
        " name, namespace, strategy, baseline, candidate, router, ingress, service, rollout, command,"
        " config, flag, dry_run, slo, detection, policy, queries, gitops)",
    ]


def test_source_target_of_a_canary(overridden: Settings) -> None:
    source = source_target(overridden, overridden.targets[0])
    assert source.key == "shop/checkout"
    assert source.queries.group_labels == ("namespace", "app", "track")
    assert source.queries.requests == "sum by ({by}) (rate(requests_total{{{selector}}}[{window}]))"
    assert source.queries.errors == "sum by ({by}) (increase(http_errors_total{{{selector}}}[{window}]))"
    assert source.queries.latency_buckets == PRESETS["default"].latency_buckets
    assert source.baseline == SeriesRef(
        labels=(("namespace", "shop"), ("app", "checkout"), ("track", "stable"))
    )
    assert source.candidate == SeriesRef(
        labels=(("namespace", "shop"), ("app", "checkout"), ("track", "canary"))
    )
    assert source.health_baseline == ("http://127.0.0.1:8081/healthz",)
    assert source.health_candidate == ("http://127.0.0.1:8082/healthz", "http://127.0.0.1:8082/readyz")


def test_source_target_of_a_deployment_has_no_baseline(overridden: Settings) -> None:
    source = source_target(overridden, overridden.targets[1])
    assert source.baseline is None
    assert source.health_baseline == ()
    assert source.queries.group_labels == ("namespace", "deployment")
    assert source.candidate == SeriesRef(labels=(("namespace", "shop"), ("deployment", "catalog")))
    assert source.health_candidate == ("http://127.0.0.1:8083/healthz",)


def test_source_targets_follow_file_order(overridden: Settings) -> None:
    assert [s.key for s in source_targets(overridden)] == ["shop/checkout", "shop/catalog"]


def test_labels_outside_the_target_group_labels_are_refused(tmp_path: Path) -> None:
    # The catalog target overrides group_labels, so its app/track labels would be ignored.
    lines = problems_of(write(tmp_path, OVERRIDES))
    assert [line.split(": ")[1] for line in lines] == [
        "targets[1].candidate.labels.app (target catalog)",
        "targets[1].candidate.labels.track (target catalog)",
    ]


def test_target_settings_key() -> None:
    target = TargetSettings.model_validate(
        {"name": "a", "strategy": "deployment", "candidate": {"deployment": "a"}}
    )
    assert target.key == "default/a"


def test_a_gitops_mode_is_checked_at_its_line(tmp_path: Path) -> None:
    document = yaml.safe_load(CANARY)
    document["targets"][0]["gitops"] = "pause"
    document["gitops"] = {"mode": "refuse", "argocd": {"tracking_method": "labels"}}
    path = write(tmp_path, yaml.safe_dump(document, sort_keys=False))
    assert problems_of(path) == [
        f"{path}:{line_of(path, 'gitops: pause')}: targets[0].gitops (target checkout): expected one of"
        " 'suspend', 'refuse', 'ignore', got 'pause'",
        f"{path}:{line_of(path, 'tracking_method')}: gitops.argocd.tracking_method: expected one of"
        " 'annotation', 'annotation+label', 'label', got 'labels'",
    ]
    document["targets"][0]["gitops"] = "ignore"
    document["gitops"]["argocd"]["tracking_method"] = "label"
    settings = load_settings(write(tmp_path, yaml.safe_dump(document)), environ={})
    assert (settings.gitops.mode, settings.targets[0].gitops) == ("refuse", "ignore")


def test_webhook_formats_and_their_secrets_are_checked_with_the_line_and_the_fix(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        events:
          webhooks:
            - name: team-chat
              url: https://hooks.slack.example/services/T0KEN
              format: slack
              secret_env: CHAT_SECRET
            - name: receiver
              url: https://receiver.example/hook
              format: standard-webhooks
            - name: pager
              url: https://pager.example/hook
              format: msteams
        """)
    lines = problems_of(path)
    assert lines[0] == (
        f"{path}:6: events.webhooks[0].secret_env: a slack webhook takes no secret (its URL is its "
        "credential): remove secret_env, or set format: standard-webhooks or cloudevents for a signed request"
    )
    assert lines[1] == (
        f"{path}:9: events.webhooks[1].format: format standard-webhooks signs every request: give "
        "secret_env or secret_file holding a whsec_<base64> secret"
    )
    assert lines[2].startswith(f"{path}:12: events.webhooks[2].format:")
    assert "one of 'cloudevents', 'slack', 'teams', 'discord', 'standard-webhooks', got 'msteams'" in lines[2]


def test_chat_webhooks_load_with_their_status_page_link(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        events:
          status_url: https://rollbackd.example.com/
          webhooks:
            - {name: slack, url: "https://hooks.slack.example/services/T0KEN", format: slack}
            - {name: teams, url: "https://teams.example/workflows/T0KEN", format: teams,
               status_url: "https://status.example/"}
        """)
    events = load_settings(path, environ={}).events
    assert [hook.format for hook in events.webhooks] == ["slack", "teams"]
    assert events.status_url == "https://rollbackd.example.com/"
    assert events.webhooks[1].status_url == "https://status.example/"


METRICS_DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"


def _metrics_doc_examples() -> list[str]:
    blocks = METRICS_DOC.read_text(encoding="utf-8").split("```yaml\n")[1:]
    return [block.split("```", 1)[0] for block in blocks]


@pytest.mark.parametrize("example", _metrics_doc_examples())
def test_every_example_of_the_metrics_page_is_a_valid_configuration(example: str, tmp_path: Path) -> None:
    document = yaml.safe_load(example)
    if "credentials" in document:  # the Helm chart's values: their config part is rollbackd's file
        document = document["config"]
    path = tmp_path / "rollbackd.yaml"
    path.write_text(yaml.safe_dump(document))
    settings = load_settings(path, environ={})
    if "prometheus" in document:  # a backend's example
        assert settings.prometheus.url == document["prometheus"]["url"]
    else:  # a query preset's example
        assert settings.targets


@pytest.mark.parametrize(
    ("prometheus", "expected"),
    [
        ({"url": "http://user:pw-in-url@prom:9090"},
         "prometheus.url: holds credentials (user:password@): put the user in basic_auth.username"),
        ({"url": "http://prom:9090/api/v1"}, "prometheus.url: must not end with /api/v1"),
        ({"url": "http://prom:9090/?tenant=a"}, "prometheus.url: must not have a query"),
        ({"bearer_token_file": "/t", "bearer_token_env": "T"},
         "prometheus.bearer_token_env: give bearer_token_file or bearer_token_env, not both"),
        ({"bearer_token_env": "T", "basic_auth": {"username": "u", "password_env": "P"}},
         "prometheus.basic_auth: give a bearer token or basic_auth, not both"),
        ({"basic_auth": {"username": "u"}},
         "prometheus.basic_auth: give exactly one of password_file or password_env"),
        ({"basic_auth": {"username": "u:v", "password_env": "P"}},
         "prometheus.basic_auth.username: a basic-auth user name cannot contain ':'"),
        ({"headers": {"Content-Type": "text/plain"}},
         "prometheus.headers.Content-Type: Content-Type is written by rollbackd itself for every query"),
        ({"headers": {"Authorization": "Bearer x"}, "bearer_token_file": "/t"},
         "prometheus.headers.Authorization: the Authorization header comes from bearer_token_file"),
        ({"headers": {"X Tenant": "a"}}, "prometheus.headers.X Tenant: expected an HTTP header name"),
        ({"headers": {"Authorization": "Bearer pw-in-url"}},
         "prometheus.headers.Authorization: Authorization carries credentials, which never go in this file"),
        ({"headers": {"X-Key": {"file": "/k", "env": "K"}}},
         "prometheus.headers.X-Key: give exactly one of file or env"),
        ({"tls": {"ca_file": "/ca.pem"}}, "prometheus.tls: TLS settings apply to https:// URLs only"),
        ({"url": "https://prom", "tls": {"key_file": "/k"}},
         "prometheus.tls.key_file: key_file needs cert_file"),
        ({"url": "https://prom", "tls": {"insecure_skip_verify": True, "ca_file": "/ca"}},
         "prometheus.tls.insecure_skip_verify: insecure_skip_verify checks nothing"),
    ],
)
def test_backend_access_mistakes_name_the_key_and_the_fix(
    prometheus: dict[str, Any], expected: str, tmp_path: Path
) -> None:
    path = tmp_path / "rollbackd.yaml"
    path.write_text(yaml.safe_dump({"prometheus": prometheus}))
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert expected in str(caught.value)
    assert "pw-in-url" not in str(caught.value)
