"""Metric backends as they are deployed: behind TLS, basic auth, bearer tokens and tenant gateways.

Real servers: a Prometheus serving TLS with basic auth and client certificates
(``--web.config.file``), a VictoriaMetrics with ``-tls`` and ``-httpAuth.*``, and a gateway of the
tests' own (:class:`~tests.backendfixtures.TenantProxy`) that wants a bearer token and an
``X-Scope-OrgID`` tenant under ``/select/<tenant>/prometheus``, in front of a plain Prometheus.
Each refusal is named for what was refused, and every failure leaves the targets without data
(never a rollback). No secret value reaches a log record or a message.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from rollbackd.config.settings import PrometheusSettings
from rollbackd.errors import PrometheusQueryError, SourceError
from rollbackd.sources.backend import BackendAccess, BackendConfigError
from rollbackd.sources.base import QueryTemplates, SeriesRef, SourceTarget
from rollbackd.sources.prometheus import PrometheusClient, PrometheusSource
from tests.backendfixtures import (
    Pki,
    SecuredPrometheus,
    TenantProxy,
    login_page,
    login_redirect,
    make_pki,
    prometheus_web_config,
    wait_for_data,
)
from tests.kubefixtures import wait_until
from tests.promfixtures import (
    PrometheusServer,
    SampleAppProcess,
    require_prometheus,
    start_prometheus,
    start_sample_app,
)
from tests.vmfixtures import VictoriaMetricsServer, require_victoria_metrics

pytestmark = pytest.mark.e2e

PASSWORD = "pw-5d1c2e-correct-horse"
WRONG_PASSWORD = "pw-0000-wrong-battery"
TOKENS = ("tok-first-7a1f", "tok-second-93bd", "tok-third-c40e")
#: Every secret of this module: none may appear in a log record or an error message.
SECRETS = (PASSWORD, WRONG_PASSWORD, *TOKENS)

TEMPLATES = QueryTemplates(
    requests="sum by ({by}) (increase(http_requests_total{{{selector}}}[{window}]))",
    errors='sum by ({by}) (increase(http_requests_total{{{selector},code=~"5.."}}[{window}]))',
    latency_buckets=(
        "sum by ({by}, le) (increase(http_request_duration_seconds_bucket{{{selector}}}[{window}]))"
    ),
    group_labels=("namespace", "deployment"),
)
CHECKOUT = SourceTarget(
    key="shop/checkout", queries=TEMPLATES,
    candidate=SeriesRef(labels=(("namespace", "shop"), ("deployment", "checkout-canary"))),
)
DATA = 'http_requests_total{namespace="shop"}'
#: Enough samples for an increase() over the window collect() uses.
READY = 'count_over_time(http_requests_total{namespace="shop"}[10s]) >= 3'


@pytest.fixture(autouse=True)
def no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every test here ends by checking that no record logged during it holds a secret."""
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.records:
        shown = f"{record.getMessage()} {record.__dict__}"
        leaked = [secret for secret in SECRETS if secret in shown]
        assert not leaked, f"a log record holds a secret: {shown}"


def assert_no_secret(text: str) -> None:
    assert not [secret for secret in SECRETS if secret in text], text


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SampleAppProcess]:
    process = start_sample_app(deployment="checkout-canary", namespace="shop", rps=50.0,
                               log_dir=tmp_path_factory.mktemp("app"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    # Valid for a DNS name only, not for 127.0.0.1: a client must be told the name to expect.
    return make_pki(tmp_path_factory.mktemp("pki"), server_names=["metrics.test"])


@pytest.fixture(scope="module")
def secured_prometheus(
    app: SampleAppProcess, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecuredPrometheus]:
    binary = require_prometheus()
    root = tmp_path_factory.mktemp("secured-prometheus")
    web = prometheus_web_config(root / "web.yml", pki=pki, users={"rollbackd": PASSWORD},
                                require_client_cert=True)
    server = SecuredPrometheus(web_config=web, targets=[app.address], data_dir=root, binary=binary)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def plain_prometheus(
    app: SampleAppProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusServer]:
    require_prometheus()
    server = start_prometheus(targets=[app.address], data_dir=tmp_path_factory.mktemp("plain"), scrapes=2)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def empty_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A tenant's backend that has no data at all."""
    require_prometheus()
    server = start_prometheus(targets=[], data_dir=tmp_path_factory.mktemp("empty"), scrapes=0)
    yield server
    server.stop()


@pytest.fixture
async def gateway(
    plain_prometheus: PrometheusServer, empty_prometheus: PrometheusServer
) -> AsyncIterator[TenantProxy]:
    upstreams = {"team-a": plain_prometheus.url, "quiet": empty_prometheus.url}
    proxy = await TenantProxy(upstreams=upstreams).start()
    yield proxy
    await proxy.stop()


def client_for(
    settings: dict[str, Any], *, environ: dict[str, str] | None = None, **access: Any
) -> PrometheusClient:
    prometheus = PrometheusSettings.model_validate({"timeout_s": 5, "retries": 0, **settings})
    return PrometheusClient(
        base_url=prometheus.url, timeout_s=prometheus.timeout_s, retries=0,
        access=BackendAccess.from_settings(prometheus, environ=environ or {}, **access),
    )


async def refusal(client: PrometheusClient) -> PrometheusQueryError:
    """The error of one query through ``client``, after checking that the whole tick through it
    leaves the target without data (no rollback can follow)."""
    with pytest.raises(PrometheusQueryError) as caught:
        await client.query("up")
    source = PrometheusSource(client=client)
    assert await source.collect([CHECKOUT], window_s=10.0) == {"shop/checkout": (None, None)}
    assert_no_secret(str(caught.value))
    return caught.value


def secret_file(path: Path, value: str) -> str:
    path.write_text(value + "\n")
    return str(path)


# --- Prometheus: TLS, client certificate and basic auth, natively ------------------------------------


def tls_settings(pki: Pki, **changes: Any) -> dict[str, Any]:
    return {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key),
            "server_name": "metrics.test", **changes}


async def test_prometheus_with_tls_client_certificate_and_basic_auth_answers(
    secured_prometheus: SecuredPrometheus, pki: Pki, tmp_path: Path
) -> None:
    settings = {
        "url": secured_prometheus.url,
        "basic_auth": {"username": "rollbackd", "password_file": secret_file(tmp_path / "pw", PASSWORD)},
        "tls": tls_settings(pki),
    }
    async with client_for(settings) as client:
        await wait_for_data(client, READY, series=1)
        source = PrometheusSource(client=client)
        pair = (await source.collect([CHECKOUT], window_s=10.0))["shop/checkout"]
        assert pair[1] is not None
        assert pair[1].requests > 0


async def test_prometheus_refuses_a_wrong_password_named_by_its_file(
    secured_prometheus: SecuredPrometheus, pki: Pki, tmp_path: Path
) -> None:
    password_file = secret_file(tmp_path / "password", WRONG_PASSWORD)
    settings = {
        "url": secured_prometheus.url,
        "basic_auth": {"username": "rollbackd", "password_file": password_file},
        "tls": tls_settings(pki),
    }
    async with client_for(settings) as client:
        await wait_for_data_or_refusal(client)
        error = await refusal(client)
    assert error.kind == "unauthorized"
    assert "answered 401 Unauthorized" in str(error)
    assert f"basic auth as user 'rollbackd' with the password from {password_file}" in str(error)


async def test_prometheus_wanting_credentials_says_none_are_configured(
    secured_prometheus: SecuredPrometheus, pki: Pki
) -> None:
    async with client_for({"url": secured_prometheus.url, "tls": tls_settings(pki)}) as client:
        await wait_for_data_or_refusal(client)
        error = await refusal(client)
    assert error.kind == "unauthorized"
    assert "none are configured; set prometheus.bearer_token_file" in str(error)


async def test_a_certificate_for_another_name_names_both(
    secured_prometheus: SecuredPrometheus, pki: Pki, tmp_path: Path
) -> None:
    settings = {
        "url": secured_prometheus.url,
        "basic_auth": {"username": "rollbackd", "password_file": secret_file(tmp_path / "pw", PASSWORD)},
        "tls": tls_settings(pki, server_name=None),
    }
    async with client_for(settings) as client:
        await wait_for_data_or_refusal(client)
        error = await refusal(client)
    assert error.kind == "tls"
    message = str(error)
    assert "is not valid for '127.0.0.1' (the URL's host)" in message
    assert "it names DNS metrics.test" in message
    assert "set prometheus.tls.server_name to one of those" in message


async def test_a_certificate_of_an_unknown_ca_asks_for_ca_file(
    secured_prometheus: SecuredPrometheus, pki: Pki, tmp_path: Path
) -> None:
    settings = {
        "url": secured_prometheus.url,
        "basic_auth": {"username": "rollbackd", "password_file": secret_file(tmp_path / "pw", PASSWORD)},
        "tls": tls_settings(pki, ca_file=None),
    }
    async with client_for(settings) as client:
        await wait_for_data_or_refusal(client)
        error = await refusal(client)
    assert error.kind == "tls"
    assert "is not signed by a trusted CA" in str(error)
    assert "set prometheus.tls.ca_file" in str(error)


async def test_a_backend_wanting_a_client_certificate_says_so(
    secured_prometheus: SecuredPrometheus, pki: Pki, tmp_path: Path
) -> None:
    settings = {
        "url": secured_prometheus.url,
        "basic_auth": {"username": "rollbackd", "password_file": secret_file(tmp_path / "pw", PASSWORD)},
        "tls": {"ca_file": str(pki.ca), "server_name": "metrics.test"},
    }
    async with client_for(settings) as client:
        await wait_for_data_or_refusal(client)
        error = await refusal(client)
    assert error.kind == "tls"
    assert "refused the TLS connection" in str(error)
    assert "it wants a client certificate it trusts; set prometheus.tls.cert_file and key_file" in str(error)


async def wait_for_data_or_refusal(client: PrometheusClient) -> None:
    """Wait until the server answers ``client`` at all (data, or a refusal that is not about
    reaching it): the module's server may still be starting."""
    async def answers() -> bool:
        try:
            await client.query("up")
        except PrometheusQueryError:
            return True
        except SourceError:
            return False
        return True

    await wait_until(answers, timeout_s=60, interval_s=0.3, what="the backend answering")


# --- VictoriaMetrics: TLS and basic auth, natively ---------------------------------------------------


@pytest.fixture(scope="module")
def secured_vm(
    app: SampleAppProcess, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VictoriaMetricsServer]:
    binary = require_victoria_metrics()
    server = VictoriaMetricsServer(
        binary=binary, targets=[app.address], data_dir=tmp_path_factory.mktemp("vm"), latency_offset="0s",
        tls=True,
        extra_args=["-tls", f"-tlsCertFile={pki.server_cert}", f"-tlsKeyFile={pki.server_key}",
                    "-httpAuth.username=rollbackd", f"-httpAuth.password={PASSWORD}"],
    )
    server.start()
    yield server
    server.stop()


async def test_victoria_metrics_with_tls_and_basic_auth_from_the_environment(
    secured_vm: VictoriaMetricsServer, pki: Pki
) -> None:
    settings = {
        "url": secured_vm.url,
        "basic_auth": {"username": "rollbackd", "password_env": "VM_PASSWORD"},
        "tls": {"ca_file": str(pki.ca), "server_name": "metrics.test"},
    }
    async with client_for(settings, environ={"VM_PASSWORD": PASSWORD}) as client:
        await wait_for_data(client, READY, series=1)
        pair = (await PrometheusSource(client=client).collect([CHECKOUT], window_s=10.0))["shop/checkout"]
        assert pair[1] is not None
        assert pair[1].requests > 0
    async with client_for(settings, environ={"VM_PASSWORD": WRONG_PASSWORD}) as client:
        error = await refusal(client)
    assert error.kind == "unauthorized"
    assert "with the password from $VM_PASSWORD" in str(error)


# --- A tenant gateway: bearer token file, X-Scope-OrgID, path prefix ---------------------------------


def gateway_settings(gateway: TenantProxy, token_file: Path, tenant: str = "team-a") -> dict[str, Any]:
    return {"url": gateway.tenant_url(tenant), "bearer_token_file": str(token_file),
            "headers": {"X-Scope-OrgID": tenant}}


async def test_a_rotated_token_is_read_again_on_401_and_the_query_sent_once_more(
    gateway: TenantProxy, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    secret_file(token_file, TOKENS[0])
    gateway.tokens = {TOKENS[0]}
    # Looked at once an hour only: the new token can come only from the re-read a 401 asks for.
    async with client_for(gateway_settings(gateway, token_file), recheck_s=3600.0) as client:
        await wait_for_data(client, DATA, series=1)
        assert gateway.seen[-1]["Authorization"] == f"Bearer {TOKENS[0]}"
        assert gateway.seen[-1]["X-Scope-OrgID"] == "team-a"

        secret_file(token_file, TOKENS[1])  # the kubelet rotates the token; the old one is refused
        gateway.tokens = {TOKENS[1]}
        before = len(gateway.seen)
        answer = await client.query(DATA)
        assert answer.values
        assert [seen["Authorization"] for seen in gateway.seen[before:]] == [
            f"Bearer {TOKENS[0]}", f"Bearer {TOKENS[1]}"
        ]

        gateway.tokens = {TOKENS[2]}  # a token the file does not have (yet): refused, named
        error = await refusal(client)
    assert error.kind == "unauthorized"
    assert f"the bearer token from {token_file} (prometheus.bearer_token_file) was refused" in str(error)


async def test_a_changed_token_file_is_picked_up_without_a_refusal(
    gateway: TenantProxy, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    secret_file(token_file, TOKENS[0])
    gateway.tokens = {TOKENS[0], TOKENS[1]}
    async with client_for(gateway_settings(gateway, token_file), recheck_s=0.0) as client:
        await wait_for_data(client, DATA, series=1)
        secret_file(token_file, TOKENS[1])
        before = len(gateway.seen)
        await client.query(DATA)
        assert [seen["Authorization"] for seen in gateway.seen[before:]] == [f"Bearer {TOKENS[1]}"]


async def test_an_unknown_tenant_is_named_in_the_403(gateway: TenantProxy, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    secret_file(token_file, TOKENS[0])
    gateway.tokens = {TOKENS[0]}
    settings = gateway_settings(gateway, token_file, tenant="team-b")
    async with client_for(settings) as client:
        error = await refusal(client)
    assert error.kind == "forbidden"
    assert "answered 403 Forbidden" in str(error)
    assert "the tenant in X-Scope-OrgID" in str(error)


async def test_a_tenant_with_no_data_is_no_data_not_an_error(gateway: TenantProxy, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    secret_file(token_file, TOKENS[0])
    gateway.tokens = {TOKENS[0]}
    async with client_for(gateway_settings(gateway, token_file, tenant="quiet")) as client:
        answer = await client.query(DATA)
        assert answer.values == ()
        source = PrometheusSource(client=client)
        assert await source.collect([CHECKOUT], window_s=10.0) == {"shop/checkout": (None, None)}
        assert source.stats.errors_total == 0


async def test_a_login_page_is_named_as_such(gateway: TenantProxy) -> None:
    gateway.answer = login_page
    async with client_for({"url": gateway.url}) as client:
        error = await refusal(client)
    assert error.kind == "not_prometheus"
    assert "answered HTTP 200 text/html, not the Prometheus API" in str(error)
    assert "is the URL a proxy's login page" in str(error)


async def test_a_redirect_to_a_login_page_is_not_followed(gateway: TenantProxy, tmp_path: Path) -> None:
    gateway.answer = login_redirect
    settings = {"url": gateway.url, "bearer_token_file": secret_file(tmp_path / "token", TOKENS[0])}
    async with client_for(settings) as client:
        error = await refusal(client)
    assert error.kind == "not_prometheus"
    assert "answered HTTP 302, a redirect to /oauth2/sign_in, not the Prometheus API" in str(error)
    assert "secret-state" not in str(error)
    assert gateway.paths
    assert all(path == "/api/v1/query" for path in gateway.paths)


# --- Start-up: a secret or TLS file that cannot be used is named with its setting --------------------


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"bearer_token_file": "{tmp}/absent"},
         "prometheus.bearer_token_file: cannot read the bearer token from {tmp}/absent: No such file"),
        ({"bearer_token_file": "{tmp}/empty"},
         "prometheus.bearer_token_file: cannot read the bearer token from {tmp}/empty: the file is empty"),
        ({"bearer_token_env": "NOT_SET"},
         "prometheus.bearer_token_env: the environment variable NOT_SET is not set (or empty)"),
        ({"basic_auth": {"username": "u", "password_file": "{tmp}/absent"}},
         "prometheus.basic_auth.password_file: cannot read the basic-auth password from {tmp}/absent"),
        ({"headers": {"X-Api-Key": {"env": "NOT_SET"}}},
         "prometheus.headers.X-Api-Key.env: the environment variable NOT_SET is not set"),
        ({"url": "https://metrics.test", "tls": {"ca_file": "{tmp}/absent"}},
         "prometheus.tls.ca_file: cannot read {tmp}/absent: No such file or directory; mount the CA bundle"),
        ({"url": "https://metrics.test", "tls": {"ca_file": "{tmp}/empty"}},
         "prometheus.tls.ca_file: {tmp}/empty holds no PEM certificate"),
        ({"url": "https://metrics.test", "tls": {"cert_file": "{tmp}/absent"}},
         "prometheus.tls.cert_file: {tmp}/absent does not exist"),
    ],
)
def test_unusable_secrets_and_tls_files_are_named_at_start(
    settings: dict[str, Any], expected: str, tmp_path: Path
) -> None:
    (tmp_path / "empty").write_text("\n")
    prometheus = PrometheusSettings.model_validate(_in(settings, tmp_path))
    with pytest.raises(BackendConfigError) as caught:
        BackendAccess.from_settings(prometheus, environ={})
    assert expected.replace("{tmp}", str(tmp_path)) in str(caught.value)


def _in(value: Any, directory: Path) -> Any:
    """``value`` with ``{tmp}`` in its strings replaced by ``directory``."""
    if isinstance(value, dict):
        return {key: _in(item, directory) for key, item in value.items()}
    return value.replace("{tmp}", str(directory)) if isinstance(value, str) else value


def test_the_secrets_stay_out_of_reprs(tmp_path: Path) -> None:
    prometheus = PrometheusSettings.model_validate({
        "url": "http://127.0.0.1:9",
        "basic_auth": {"username": "u", "password_file": secret_file(tmp_path / "p", PASSWORD)},
        "headers": {"X-Api-Key": {"env": "KEY"}},
    })
    access = BackendAccess.from_settings(prometheus, environ={"KEY": TOKENS[0]})
    client = PrometheusClient(base_url=prometheus.url, access=access)
    assert_no_secret(repr(access) + repr(prometheus) + repr(client.access) + str(prometheus.model_dump()))
