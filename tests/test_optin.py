"""Opt-in by annotation, the reading half: annotations on a Deployment become the same target a
file entry would, checked with the same rules and wording; a bad one is named with its fix; caps and
allowed namespaces hold; the file wins over annotations for the same release."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollbackd.config.settings import (
    DiscoverySettings,
    GatewayApiRouterSettings,
    Settings,
    Side,
    TargetSettings,
)
from rollbackd.model import Strategy
from rollbackd.optin import (
    BASELINE,
    CANARY_SERVICE,
    HTTPROUTE,
    INGRESS,
    NAME,
    PRESET,
    SLO_ERROR_RATE,
    SLO_P95_MS,
    STABLE_SERVICE,
    STRATEGY,
    ObjectRef,
    read_opt_in,
    with_opt_ins,
)
from tests.test_config import problems_of, write

REF = ObjectRef("Deployment", "shop", "web-canary")
CANARY = {STRATEGY: "canary", BASELINE: "web", INGRESS: "web-canary"}


def settings(**discovery: object) -> Settings:
    return Settings(discovery=DiscoverySettings(enabled=True, namespaces=("shop",), **discovery))


def test_annotations_declare_the_target_a_file_entry_would() -> None:
    opt_in = read_opt_in(REF, {**CANARY, SLO_ERROR_RATE: "0.02", SLO_P95_MS: "300"}, settings=settings())

    assert opt_in is not None
    assert opt_in.problems == ()
    assert opt_in.target == TargetSettings(
        name="web-canary", namespace="shop", strategy=Strategy.CANARY, baseline=Side(deployment="web"),
        candidate=Side(deployment="web-canary"), ingress="web-canary",
        slo={"max_error_rate": 0.02, "max_p95_ms": 300.0},
    )


def test_a_deployment_without_rollbackd_annotations_does_not_opt_in() -> None:
    assert read_opt_in(REF, {"rollbackd.io/rollback-risk": "high"}, settings=settings()) is None
    assert read_opt_in(REF, {"app.kubernetes.io/name": "web"}, settings=settings()) is None


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        (
            {**CANARY, SLO_ERROR_RATE: "one percent"},
            "rollbackd.io/slo-error-rate: expected a number greater than 0 and less than 1, "
            "got 'one percent'",
        ),
        ({**CANARY, SLO_P95_MS: "-5"}, "rollbackd.io/slo-p95-ms: expected a number of milliseconds"),
        ({**CANARY, STRATEGY: "canari"}, "rollbackd.io/strategy: expected one of 'canary', 'blue-green'"),
        (
            {STRATEGY: "canary", BASELINE: "web"},
            "rollbackd.io/ingress: missing for strategy 'canary': name the canary's ingress-nginx Ingress",
        ),
        (
            {SLO_ERROR_RATE: "0.01"},
            "rollbackd.io/strategy: missing; it opts the Deployment in and says how it is rolled out: "
            "canary, blue-green or deployment",
        ),
        ({**CANARY, BASELINE: "Web_Stable"}, "rollbackd.io/baseline: expected a name of lowercase letters"),
        ({**CANARY, "rollbackd.io/dry-run": "perhaps"}, "rollbackd.io/dry-run: "),
        (
            {**CANARY, "rollbackd.io/service": "web"},
            "annotation rollbackd.io/service does not apply to strategy 'canary' (only to blue-green)",
        ),
        (
            {**CANARY, STRATEGY: "argo-rollout"},
            "rollbackd.io/strategy: 'argo-rollout' is for an Argo Rollouts Rollout, not a Deployment",
        ),
    ],
)
def test_a_bad_annotation_is_refused_naming_the_annotation_and_the_fix(
    annotations: dict[str, str], expected: str
) -> None:
    opt_in = read_opt_in(REF, annotations, settings=settings())

    assert opt_in is not None
    assert opt_in.target is None
    assert any(expected in problem for problem in opt_in.problems), opt_in.problems


def test_the_same_value_in_the_file_gets_the_same_words(tmp_path: Path) -> None:
    """The file and the annotation are checked by the same rules, worded the same way."""
    path = write(
        tmp_path,
        "targets:\n  - name: web\n    namespace: shop\n    strategy: deployment\n"
        "    candidate: {deployment: web}\n    slo: {max_error_rate: one percent}\n",
    )
    [file_problem] = problems_of(path)
    opt_in = read_opt_in(REF, {STRATEGY: "deployment", SLO_ERROR_RATE: "one percent"}, settings=settings())
    assert opt_in is not None
    [problem] = opt_in.problems
    assert problem.startswith(f"{SLO_ERROR_RATE}: expected a number")
    assert file_problem.endswith(problem.removeprefix(f"{SLO_ERROR_RATE}: "))


def test_an_unknown_rollbackd_annotation_is_named_with_a_suggestion_and_the_rest_is_used() -> None:
    opt_in = read_opt_in(REF, {**CANARY, "rollbackd.io/slo-error-rat": "0.01"}, settings=settings())

    assert opt_in is not None
    assert opt_in.target is not None
    assert opt_in.problems == (
        "rollbackd.io/slo-error-rat: unknown annotation, ignored (did you mean rollbackd.io/slo-error-rate?)",
    )


def test_an_slo_looser_than_the_cap_is_refused_with_the_most_allowed() -> None:
    capped = settings(max_slo_error_rate=0.05, max_slo_p95_ms=800)

    loose = read_opt_in(REF, {**CANARY, SLO_ERROR_RATE: "0.2", SLO_P95_MS: "2000"}, settings=capped)
    within = read_opt_in(REF, {**CANARY, SLO_ERROR_RATE: "0.05", SLO_P95_MS: "500"}, settings=capped)

    assert loose is not None
    assert loose.target is None
    assert loose.problems == (
        "rollbackd.io/slo-error-rate: 0.2 is looser than annotations may ask for "
        "(discovery.max_slo_error_rate is 0.05); write at most 0.05",
        "rollbackd.io/slo-p95-ms: 2000 is looser than annotations may ask for "
        "(discovery.max_slo_p95_ms is 800); write at most 800",
    )
    assert within is not None
    assert within.target is not None


def test_a_namespace_not_allowed_may_not_opt_in() -> None:
    opt_in = read_opt_in(
        ObjectRef("Deployment", "payments", "api"), {STRATEGY: "deployment"},
        settings=settings(all_namespaces=True),
    )

    assert opt_in is not None
    assert opt_in.target is None
    assert opt_in.problems == (
        "namespace payments may not opt in: discovery.namespaces lists shop (ask whoever runs rollbackd to "
        "add it, or list the release in the file's targets)",
    )


def test_the_file_wins_over_annotations_for_the_same_release() -> None:
    file_target = TargetSettings(
        name="web", namespace="shop", strategy=Strategy.CANARY, baseline=Side(deployment="web"),
        candidate=Side(deployment="web-canary"), ingress="web-canary",
    )
    file = settings().model_copy(update={"targets": (file_target,)})
    same_candidate = read_opt_in(REF, CANARY, settings=file)
    same_key = read_opt_in(ObjectRef("Deployment", "shop", "web-next"), {STRATEGY: "deployment", NAME: "web"},
                           settings=file)
    other = read_opt_in(ObjectRef("Deployment", "shop", "cart"), {STRATEGY: "deployment"}, settings=file)
    assert same_candidate is not None
    assert same_key is not None
    assert other is not None

    merged = with_opt_ins(file, [same_candidate, same_key, other])

    assert [target.key for target in merged.settings.targets] == ["shop/web", "shop/cart"]
    assert merged.settings.targets[0] is file_target
    assert dict(merged.origins) == {"shop/cart": ObjectRef("Deployment", "shop", "cart")}
    assert set(merged.conflicts) == {REF, ObjectRef("Deployment", "shop", "web-next")}
    assert "the file's target shop/web already watches this release: the file wins" in merged.conflicts[REF]


def test_two_objects_declaring_the_same_target_the_first_keeps_it() -> None:
    named_x = {STRATEGY: "deployment", NAME: "x"}
    first = read_opt_in(ObjectRef("Deployment", "shop", "a"), named_x, settings=settings())
    second = read_opt_in(ObjectRef("Deployment", "shop", "b"), named_x, settings=settings())
    assert first is not None
    assert second is not None

    merged = with_opt_ins(settings(), [second, first])

    assert merged.origins == {"shop/x": first.ref}
    assert "already declared by the annotations of Deployment shop/a" in merged.conflicts[second.ref]


def test_discovery_needs_the_namespaces_that_may_opt_in(tmp_path: Path) -> None:
    [problem] = problems_of(write(tmp_path, "discovery:\n  enabled: true\n"))

    assert problem == (
        f"{tmp_path / 'rollbackd.yaml'}:1: discovery: list the namespaces whose Deployments may opt "
        "in (namespaces: [shop, payments]), or set all_namespaces: true to watch every namespace"
    )


def test_a_canary_behind_a_gateway_api_route_is_declared_by_its_route_and_services() -> None:
    routed = {STRATEGY: "canary", BASELINE: "web", HTTPROUTE: "web", CANARY_SERVICE: "web-canary",
              STABLE_SERVICE: "web-stable"}

    opt_in = read_opt_in(REF, routed, settings=settings())
    missing = read_opt_in(REF, {**routed, STABLE_SERVICE: "web-canary"}, settings=settings())

    assert opt_in is not None
    assert opt_in.target is not None
    assert opt_in.target.router == GatewayApiRouterSettings(
        kind="gateway-api", route="web", canary_service="web-canary", stable_service="web-stable"
    )
    assert missing is not None
    assert missing.target is None
    assert missing.problems == (
        "rollbackd.io/canary-service and rollbackd.io/stable-service are both "
        "'web-canary': name the canary's Service and the stable version's Service (two backendRefs of the "
        "route)",
    )


def test_a_query_preset_is_chosen_by_annotation_and_a_wrong_one_is_named() -> None:
    opt_in = read_opt_in(REF, {**CANARY, PRESET: "kube-prometheus"}, settings=settings())

    assert opt_in is not None
    assert opt_in.problems == ()
    assert opt_in.target is not None
    assert opt_in.target.queries.preset == "kube-prometheus"

    wrong = read_opt_in(REF, {**CANARY, PRESET: "kube-prom"}, settings=settings())
    assert wrong is not None
    assert wrong.target is None
    assert wrong.problems == (
        f"{PRESET}: expected one of 'default', 'kube-prometheus', 'istio', 'otel', got 'kube-prom'",
    )
