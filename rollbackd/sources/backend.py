"""How the metrics backend is reached: credentials, TLS and extra headers, as ``prometheus:`` says.

:meth:`BackendAccess.from_settings` reads everything once, at start: the secrets (a bearer token,
a basic-auth password, header values) from the files and environment variables the settings name,
the CA bundle and client certificate into one :class:`ssl.SSLContext`. A problem there is a
:class:`BackendConfigError` naming the setting, the file or variable, and the fix. Afterwards:

- the headers that never change (a tenant's ``X-Scope-OrgID``, basic auth, a token from the
  environment) are given to the HTTP session once;
- a bearer token from a file (a service-account token, rotated by the kubelet) is
  :class:`TokenFile`: its file is looked at (``stat``) at most once per ``recheck_s`` of event-loop
  time and read again only when it changed; a query answered 401 reads it again at once, and is
  sent once more if the token changed;
- a refusal (401, 403) becomes an error naming what was refused (:meth:`BackendAccess.refused`),
  and a certificate problem one naming the expected server name and the names the certificate
  carries (:func:`certificate_problem`).

Secret values never appear in a message, a log record or a ``repr``: messages name the file or
the variable they came from.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rollbackd.config.settings import BackendTlsSettings, HeaderSecret, PrometheusSettings
from rollbackd.errors import PermanentError, PrometheusQueryError

logger = logging.getLogger(__name__)

#: Default shortest time between two looks at a token file, in seconds of event-loop time.
TOKEN_RECHECK_S = 1.0

#: OpenSSL's verification results for a certificate that does not carry the expected host name or
#: IP address.
_NAME_MISMATCH = frozenset({62, 64})
#: OpenSSL's results for a certificate signed by no CA the context trusts.
_UNTRUSTED = frozenset({18, 19, 20, 21})
#: OpenSSL's result for an expired certificate.
_EXPIRED = 10


class BackendConfigError(PermanentError):
    """The backend's access cannot be set up at start (a secret or TLS file missing or unusable);
    the message names the setting, the file or variable, and what to do."""


def _read_text(path: str, *, what: str, setting: str) -> str:
    """The stripped content of ``path``, or :class:`BackendConfigError` saying why not."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise BackendConfigError(
            f"{setting}: cannot read {what} from {path}: {exc.strerror or type(exc).__name__}; mount it "
            f"there (e.g. from a Secret) or fix the path"
        ) from None
    except UnicodeDecodeError:
        raise BackendConfigError(f"{setting}: {path} is not UTF-8 text; it should hold {what}") from None
    if not text:
        raise BackendConfigError(f"{setting}: {path} is empty; it should hold {what}")
    return text


def _read_env(name: str, environ: Mapping[str, str], *, what: str, setting: str) -> str:
    value = (environ.get(name) or "").strip()
    if not value:
        raise BackendConfigError(
            f"{setting}: the environment variable {name} is not set (or empty); it should hold {what}"
        )
    return value


class TokenFile:
    """A bearer token in a file (surrounding whitespace stripped), read again when the file changes
    (symlinks followed, as a mounted Secret's are swapped), looked at no more often than once per
    ``recheck_s`` seconds of event-loop time. A file that cannot be read keeps the last token (a
    Secret's swap leaves a moment without one) and is logged once per problem."""

    def __init__(self, path: str, *, recheck_s: float = TOKEN_RECHECK_S) -> None:
        self.path = path
        self.recheck_s = recheck_s
        self._stamp: tuple[str, int, int, int] | None = None
        self._token: str | None = None
        self._checked_at: float | None = None
        self._problem: str | None = None

    def __repr__(self) -> str:
        return f"TokenFile({self.path!r})"

    def load(self) -> None:
        """Read the token now; :class:`BackendConfigError` when the file cannot be read or is empty
        (at start: nothing is queried without credentials)."""
        if not self._look():
            raise BackendConfigError(
                f"prometheus.bearer_token_file: cannot read the bearer token from {self.path}: "
                f"{self._problem}; mount the token there (e.g. a projected service-account token) or fix "
                f"the path"
            )

    def header(self, now: float) -> str:
        """The ``Authorization`` header's value at event-loop time ``now``."""
        if self._checked_at is None or now - self._checked_at >= self.recheck_s:
            self._checked_at = now
            self._look()
        if self._token is None:
            raise PrometheusQueryError(
                f"cannot read the bearer token from {self.path} (prometheus.bearer_token_file): "
                f"{self._problem}; no query is sent until it can be read",
                kind="credentials",
            )
        return f"Bearer {self._token}"

    def reread(self) -> bool:
        """Read the file again at once (a query was answered 401); whether the token changed."""
        before = self._token
        self._stamp = None
        self._look()
        return self._token is not None and self._token != before

    def _look(self) -> bool:
        """Read the file if it changed; whether a token is known afterwards."""
        try:
            resolved = Path(self.path).resolve(strict=True)
            stat = resolved.stat()
            stamp = (str(resolved), stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                token = resolved.read_text(encoding="utf-8").strip()
                if not token:
                    raise ValueError("the file is empty")
                if self._token is not None and token != self._token:
                    logger.info("the Prometheus bearer token changed; using the new one",
                                extra={"bearer_token_file": self.path})
                self._token = token
                self._stamp = stamp
            self._problem = None
            return True
        except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            problem = getattr(exc, "strerror", None) or (
                str(exc) if type(exc) is ValueError else type(exc).__name__
            )
            if problem != self._problem:
                logger.warning(
                    "cannot read the Prometheus bearer token file (%s)%s", problem,
                    "; still sending the last token read" if self._token is not None else "",
                    extra={"bearer_token_file": self.path},
                )
            self._problem = problem
            self._stamp = None
            return self._token is not None


def _context(tls: BackendTlsSettings, *, check_hostname: bool = True) -> ssl.SSLContext:
    """The TLS context ``tls`` describes; :class:`BackendConfigError` when a file is unusable."""
    if tls.insecure_skip_verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        try:
            context = ssl.create_default_context(cafile=tls.ca_file)
        except ssl.SSLError:
            raise BackendConfigError(
                f"prometheus.tls.ca_file: {tls.ca_file} holds no PEM certificate; give the CA bundle (PEM) "
                "that signed the backend's certificate"
            ) from None
        except OSError as exc:
            raise BackendConfigError(
                f"prometheus.tls.ca_file: cannot read {tls.ca_file}: {exc.strerror or type(exc).__name__}; "
                "mount the CA bundle (PEM) that signed the backend's certificate there, or fix the path"
            ) from None
        context.check_hostname = check_hostname
    if tls.cert_file:
        for setting, path in (("cert_file", tls.cert_file), ("key_file", tls.key_file)):
            if path is not None and not Path(path).is_file():
                raise BackendConfigError(
                    f"prometheus.tls.{setting}: {path} does not exist (or is not a file); mount the "
                    "client certificate and its key there, or fix the path"
                )
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise BackendConfigError(
                f"prometheus.tls.cert_file / key_file: {tls.cert_file} and "
                f"{tls.key_file or '(key in the same file)'} are not a PEM certificate with its private "
                f"key ({getattr(exc, 'reason', None) or type(exc).__name__}); give both in PEM"
            ) from None
    return context


@dataclass(frozen=True, slots=True)
class BackendAccess:
    """How every query reaches the backend (see the module docstring).

    - ``headers``: sent with every query (secrets included: never shown);
    - ``token``: the bearer token file, when the token comes from one;
    - ``tls``: the TLS context of an https:// URL (``None`` for http://);
    - ``diagnostic_tls``: the same trust without the name check, to tell which names a certificate
      carries when it does not carry the expected one;
    - ``server_name``: the name the certificate must carry when not the URL's host;
    - ``credential``: where the credentials come from, in words, for messages
      (``"the bearer token from /var/run/token (prometheus.bearer_token_file)"``);
    - ``header_names``: the extra headers' names, for messages.
    """

    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    token: TokenFile | None = None
    tls: ssl.SSLContext | None = None
    diagnostic_tls: ssl.SSLContext | None = field(default=None, repr=False)
    server_name: str | None = None
    credential: str | None = None
    header_names: tuple[str, ...] = ()

    @classmethod
    def from_settings(
        cls, settings: PrometheusSettings, *, environ: Mapping[str, str], recheck_s: float = TOKEN_RECHECK_S
    ) -> BackendAccess:
        """Read ``settings``' secrets and TLS files (``environ``: where ``*_env`` names are looked up).

        Raises :class:`BackendConfigError` naming the setting and the file or variable at fault."""
        headers: dict[str, str] = {}
        for name, value in settings.headers.items():
            headers[name] = value if isinstance(value, str) else _header_secret(name, value, environ)
        token: TokenFile | None = None
        credential: str | None = None
        if settings.bearer_token_file:
            token = TokenFile(settings.bearer_token_file, recheck_s=recheck_s)
            token.load()
            credential = f"the bearer token from {settings.bearer_token_file} (prometheus.bearer_token_file)"
        elif settings.bearer_token_env:
            value = _read_env(settings.bearer_token_env, environ, what="a bearer token",
                              setting="prometheus.bearer_token_env")
            headers["Authorization"] = f"Bearer {value}"
            credential = f"the bearer token from ${settings.bearer_token_env} (prometheus.bearer_token_env)"
        elif settings.basic_auth is not None:
            auth = settings.basic_auth
            if auth.password_file:
                password = _read_text(auth.password_file, what="the basic-auth password",
                                      setting="prometheus.basic_auth.password_file")
                where = auth.password_file
            else:
                assert auth.password_env is not None  # the settings require one of the two
                password = _read_env(auth.password_env, environ, what="the basic-auth password",
                                     setting="prometheus.basic_auth.password_env")
                where = f"${auth.password_env}"
            pair = base64.b64encode(f"{auth.username}:{password}".encode()).decode("ascii")
            headers["Authorization"] = f"Basic {pair}"
            credential = f"basic auth as user {auth.username!r} with the password from {where}"
        elif any(name.lower() == "authorization" for name in headers):
            credential = "the Authorization header of prometheus.headers"
        tls_context = diagnostic = None
        if settings.url.startswith("https://"):
            tls_context = _context(settings.tls)
            if not settings.tls.insecure_skip_verify:
                diagnostic = _context(settings.tls, check_hostname=False)
            else:
                logger.warning(
                    "prometheus.tls.insecure_skip_verify: the backend's certificate is not checked; anyone "
                    "on the path can read and change the metrics rollbackd judges releases by"
                )
        elif credential is not None:
            logger.warning(
                "prometheus: credentials are sent over plain http:// (%s); use https:// unless the "
                "backend is reached over a trusted link", urlsplit(settings.url).hostname,
            )
        return cls(
            headers=headers,
            token=token,
            tls=tls_context,
            diagnostic_tls=diagnostic,
            server_name=settings.tls.server_name,
            credential=credential,
            header_names=tuple(name for name in settings.headers if name.lower() != "authorization"),
        )

    def request_headers(self, now: float) -> Mapping[str, str] | None:
        """Headers of one query beyond :attr:`headers`: the current bearer token from its file."""
        if self.token is None:
            return None
        return {"Authorization": self.token.header(now)}

    def refused(self, status: int, where: str) -> PrometheusQueryError:
        """The error of a query answered ``status`` 401 or 403 by the backend at ``where``."""
        if status == 401:
            if self.credential is None:
                message = (
                    f"Prometheus at {where} answered 401 Unauthorized: it wants credentials and none are "
                    "configured; set prometheus.bearer_token_file (or bearer_token_env) or "
                    "prometheus.basic_auth"
                )
            else:
                message = (
                    f"Prometheus at {where} answered 401 Unauthorized: {self.credential} was refused; "
                    "check that it is current and valid for this backend"
                )
            return PrometheusQueryError(message, kind="unauthorized", status=status)
        who = self.credential or "the request (no credentials configured)"
        message = f"Prometheus at {where} answered 403 Forbidden: {who} is not allowed to query"
        if self.header_names:
            message += f" with the headers {', '.join(self.header_names)} of prometheus.headers"
        message += "; check its permissions"
        if any(name.lower() == "x-scope-orgid" for name in self.header_names):
            message += " and the tenant in X-Scope-OrgID"
        return PrometheusQueryError(message, kind="forbidden", status=status)


def _header_secret(name: str, value: HeaderSecret, environ: Mapping[str, str]) -> str:
    setting = f"prometheus.headers.{name}"
    if value.file:
        text = _read_text(value.file, what=f"the value of the {name} header", setting=f"{setting}.file")
    else:
        assert value.env is not None  # HeaderSecret requires one of the two
        text = _read_env(value.env, environ, what=f"the value of the {name} header", setting=f"{setting}.env")
    if "\r" in text or "\n" in text:
        where = value.file or f"${value.env}"
        raise BackendConfigError(f"{setting}: the value from {where} has a line break; a header is one line")
    return text


async def certificate_problem(
    error: ssl.SSLCertVerificationError,
    *,
    host: str,
    port: int,
    server_name: str | None,
    diagnostic: ssl.SSLContext | None,
    timeout_s: float,
) -> str:
    """What is wrong with the backend's certificate, in words, with the fix: for a name mismatch,
    the name expected and the names the certificate carries (read through a second handshake that
    checks the signature but not the name)."""
    expected = server_name or host
    source = "prometheus.tls.server_name" if server_name else "the URL's host"
    code = getattr(error, "verify_code", None)
    if code in _NAME_MISMATCH:
        names = await _certificate_names(host, port, expected, diagnostic, timeout_s)
        carried = f"it names {', '.join(names)}" if names else "the names it carries could not be read"
        return (
            f"the TLS certificate of {host}:{port} is not valid for {expected!r} ({source}): {carried}; "
            "set prometheus.tls.server_name to one of those, or have the certificate issued for "
            f"{expected!r}"
        )
    if code in _UNTRUSTED:
        return (
            f"the TLS certificate of {host}:{port} is not signed by a trusted CA "
            f"({getattr(error, 'verify_message', None) or error}); set prometheus.tls.ca_file to the CA "
            "bundle (PEM) that signed it"
        )
    if code == _EXPIRED:
        return f"the TLS certificate of {host}:{port} has expired; the backend needs a renewed certificate"
    detail = getattr(error, "verify_message", None) or str(error)
    return f"the TLS certificate of {host}:{port} was refused: {detail}"


async def _certificate_names(
    host: str, port: int, server_name: str, context: ssl.SSLContext | None, timeout_s: float
) -> list[str]:
    if context is None:
        return []
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=server_name)
        certificate: Any = writer.get_extra_info("peercert") or {}
    except (OSError, TimeoutError, ssl.SSLError):
        return []
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                await writer.wait_closed()
    names = [f"{kind} {value}" for kind, value in certificate.get("subjectAltName", ())]
    if not names:
        for rdn in certificate.get("subject", ()):
            names.extend(f"CN {value}" for key, value in rdn if key == "commonName")
    return names
