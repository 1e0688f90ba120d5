"""Metric backends behind authentication, TLS and tenant headers, for tests: made here, at test time.

- :func:`make_pki`: a CA, a server certificate for given names and a client certificate, written
  as PEM files (``cryptography``);
- :func:`prometheus_web_config`: Prometheus' ``--web.config.file`` serving TLS and basic auth (its
  users' passwords as bcrypt hashes), optionally requiring a client certificate;
- :class:`SecuredPrometheus`: a :class:`~tests.promfixtures.PrometheusServer` started with such a
  web configuration (its own readiness checks cannot get in: wait with :func:`wait_for_data`);
- :class:`TenantProxy`: a small proxy of the tests' own in front of a plain backend, as a Mimir /
  VictoriaMetrics-cluster gateway is: it wants a bearer token it knows, an ``X-Scope-OrgID`` tenant
  it knows, and the path ``/select/<tenant>/prometheus/api/v1/...``, rewritten to the upstream's
  ``/api/v1/...``; it can also answer as a login proxy does (HTML, or a redirect).

Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rollbackd.errors import SourceError
from rollbackd.sources.prometheus import PrometheusClient
from tests.kubefixtures import wait_until
from tests.promfixtures import HOST, PrometheusServer


@dataclass(frozen=True)
class Pki:
    """PEM files: ``ca`` signed ``server_cert`` (for the names given) and ``client_cert``."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))


def make_pki(directory: Path, *, server_names: Sequence[str]) -> Pki:
    """A fresh CA with a server certificate valid for ``server_names`` (DNS names or IP addresses)
    and a client certificate, written into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("rollbackd test CA")).issuer_name(_name("rollbackd test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False),
                       critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def issue(
        common_name: str, usage: x509.ObjectIdentifier, names: Sequence[str]
    ) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names:
            alternatives: list[x509.GeneralName] = []
            for name in names:
                try:
                    alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
                except ValueError:
                    alternatives.append(x509.DNSName(name))
            builder = builder.add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM), key

    pki = Pki(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
    )
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server_pem, server_key = issue(server_names[0], ExtendedKeyUsageOID.SERVER_AUTH, server_names)
    pki.server_cert.write_bytes(server_pem)
    _write_key(server_key, pki.server_key)
    client_pem, client_key = issue("rollbackd", ExtendedKeyUsageOID.CLIENT_AUTH, ())
    pki.client_cert.write_bytes(client_pem)
    _write_key(client_key, pki.client_key)
    return pki


def prometheus_web_config(
    path: Path, *, pki: Pki, users: dict[str, str], require_client_cert: bool = False
) -> Path:
    """Write Prometheus' web configuration: TLS with ``pki``'s server certificate, basic auth for
    ``users`` (name -> password, stored as bcrypt hashes), a client certificate signed by the CA
    required when ``require_client_cert``."""
    tls: dict[str, Any] = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}
    if require_client_cert:
        tls |= {"client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": str(pki.ca)}
    config = {
        "tls_server_config": tls,
        "basic_auth_users": {
            name: bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
            for name, password in users.items()
        },
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


class SecuredPrometheus(PrometheusServer):
    """Prometheus serving its API over TLS with basic auth (``web_config``, see
    :func:`prometheus_web_config`). Its own readiness checks cannot get in: wait with
    :func:`wait_for_data` through a client that can."""

    name = "prometheus (TLS, basic auth)"

    def __init__(self, *, web_config: Path, **options: Any) -> None:
        self.web_config = web_config
        super().__init__(**options)

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.port}"

    def _command(self) -> list[str]:
        return [*super()._command(), f"--web.config.file={self.web_config}"]


async def wait_for_data(
    client: PrometheusClient, query: str, *, series: int, timeout_s: float = 60.0
) -> None:
    """Wait until ``query`` answers at least ``series`` series through ``client`` (which may need
    credentials, TLS and headers to get in); the last error is shown if it never does."""
    last: list[str] = []

    async def enough() -> bool:
        try:
            answer = await client.query(query)
        except SourceError as exc:
            last[:] = [str(exc)]
            return False
        last[:] = [f"{len(answer.values)} series"]
        return len(answer.values) >= series

    try:
        await wait_until(enough, timeout_s=timeout_s, interval_s=0.3, what=f"data for {query}")
    except pytest.fail.Exception:
        raise AssertionError(f"no data for {query} within {timeout_s:g}s; last answer: {last}") from None


FORM = "application/x-www-form-urlencoded"


@dataclass
class TenantProxy:
    """A gateway of the tests' own in front of ``upstreams`` (tenant -> plain base URL).

    A request must carry ``Authorization: Bearer <t>`` with ``t`` in :attr:`tokens` (else 401),
    and an ``X-Scope-OrgID`` in :attr:`upstreams` (else 403); its path must be
    ``/select/<tenant>/prometheus/api/v1/<endpoint>`` with the same tenant (else 404). It is sent on
    to that tenant's upstream as ``/api/v1/<endpoint>``. :attr:`seen` holds every request's
    headers and :attr:`paths` its path; :attr:`answer` replaces the gateway's behaviour with a
    fixed answer (a login page)."""

    upstreams: dict[str, str]
    tokens: set[str] = field(default_factory=set)
    seen: list[dict[str, str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    answer: Callable[[web.Request], web.StreamResponse] | None = None
    port: int = 0
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def tenant_url(self, tenant: str) -> str:
        return f"{self.url}/select/{tenant}/prometheus"

    async def start(self) -> TenantProxy:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._session = aiohttp.ClientSession()
        return self

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(dict(request.headers))
        self.paths.append(request.path)
        if self.answer is not None:
            return self.answer(request)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or token not in self.tokens:
            return web.Response(status=401, text="unauthorized\n", headers={"WWW-Authenticate": "Bearer"})
        tenant = request.headers.get("X-Scope-OrgID", "")
        if tenant not in self.upstreams:
            return web.Response(status=403, text=f"tenant {tenant!r} unknown\n")
        prefix = f"/select/{tenant}/prometheus/api/v1/"
        if not request.path.startswith(prefix):
            return web.Response(status=404, text=f"no route {request.path}\n")
        assert self._session is not None
        target = f"{self.upstreams[tenant]}/api/v1/{request.path.removeprefix(prefix)}"
        async with self._session.request(
            request.method, target, data=await request.read(),
            headers={"Content-Type": request.headers.get("Content-Type", FORM)},
        ) as upstream:
            body = await upstream.read()
            return web.Response(status=upstream.status, body=body,
                                content_type=upstream.content_type or "application/json")


def login_page(request: web.Request) -> web.StreamResponse:
    """What a login proxy answers an API request with: a page for people."""
    return web.Response(status=200, content_type="text/html",
                        text="<!DOCTYPE html><html><body><form>Sign in</form></body></html>")


def login_redirect(request: web.Request) -> web.StreamResponse:
    """A login proxy sending the request to its sign-in page."""
    raise web.HTTPFound("/oauth2/sign_in?rd=%2Fapi%2Fv1%2Fquery&state=secret-state")
