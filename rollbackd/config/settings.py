"""The configuration model: one YAML file plus ``ROLLBACKD_…`` environment overrides.

Every value has a documented default; per-target ``slo``, ``policy``, ``detection`` and ``queries``
override the top-level ``defaults`` key by key. Models are frozen: derive variants with
``model_copy(update=...)``.

The core's tunables (``slo``, ``severity``, ``detection``, ``policy``) are declared once, with
their defaults, bounds and descriptions, in :class:`rollbackd.model.Slo` and :mod:`rollbackd.params`:
their settings models and per-target overrides are derived from those declarations here, and
:mod:`rollbackd.config.resolve` turns them back into the core's values.

Validators report every problem they find at once, each at the key it concerns, so that
``rollbackd check-config`` can point at the right line of the file.
"""

from __future__ import annotations

import enum
import string
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self, TypeAlias, get_type_hints

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from rollbackd.config.presets import PresetName, QueryPreset, resolve_queries
from rollbackd.config.storeurl import redact_url, store_kind
from rollbackd.knobs import DAY, HOUR, MIN_PERIOD_S, Knob, knobs
from rollbackd.model import Slo, Strategy
from rollbackd.params import Detection, Policy, Severity

#: Names of Kubernetes objects and of targets: lowercase letters, digits and ``-``.
K8S_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: A Prometheus label name.
LABEL_NAME_PATTERN = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
#: An absolute http(s) URL.
URL_PATTERN = r"^https?://\S+$"

#: Bounds shared by several settings (docs/configuration.md lists every setting's bounds). Durations
#: are in seconds; every number must be finite (``.inf`` and ``.nan`` are refused). The units, and
#: the bounds of the core's tunables, are in :mod:`rollbackd.knobs`.
YEAR = 365 * DAY
#: Timeouts of one request (Prometheus query, health probe, Kubernetes request, publish, POST).
MIN_TIMEOUT_S = 0.1
MAX_TIMEOUT_S = 600
#: Pauses between retries and reconnections.
MIN_BACKOFF_S = 0.01
MAX_BACKOFF_S = HOUR
#: Retries of one request.
MAX_RETRIES = 20
MAX_CONCURRENCY = 10_000
#: Most intervals a detection window may span: each target keeps its window's observations in
#: memory (about 2.5 KiB per interval).
MAX_WINDOW_INTERVALS = 10_000

#: Placeholders a PromQL template may use; the first two are required.
TEMPLATE_PLACEHOLDERS = ("selector", "by", "window")

LabelName = Annotated[str, Field(pattern=LABEL_NAME_PATTERN)]
Url = Annotated[str, Field(pattern=URL_PATTERN)]


class _Frozen(BaseModel):
    # hide_input_in_errors: str(ValidationError) must not quote values (store.url holds a password).
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, hide_input_in_errors=True)


def _problem(kind: str, message: str, loc: tuple[int | str, ...], value: Any, **ctx: Any) -> InitErrorDetails:
    """One validation problem at ``loc`` (relative to the model being validated)."""
    return {"type": PydanticCustomError(kind, message, ctx or None), "loc": loc, "input": value}


def _raise(title: str, problems: list[InitErrorDetails]) -> None:
    """Raise all ``problems`` at once; pydantic prefixes their locations when nested."""
    if problems:
        raise ValidationError.from_exception_data(title, problems)


def template_problem(template: str) -> str | None:
    """What is wrong with a PromQL template's placeholders, or ``None`` when it is usable."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        return f"cannot be filled in: {exc} (write {{{{ and }}}} for literal braces)"
    unknown = sorted(fields - set(TEMPLATE_PLACEHOLDERS))
    if unknown:
        return (
            f"has an unknown placeholder {{{unknown[0]}}}: templates may use {{selector}}, {{by}}"
            " and {window} (write {{ and }} for literal braces)"
        )
    missing = [name for name in TEMPLATE_PLACEHOLDERS[:2] if name not in fields]
    if missing:
        return f"lacks the placeholder {{{missing[0]}}}, which rollbackd fills in to tell the series apart"
    return None


# --- the core's tunables, derived from their declarations -----------------------------------------


def _written(hint: Any) -> Any:
    """How a core value's type is written in the file: an enum as one of its values."""
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return Literal[tuple(member.value for member in hint)]
    return hint


def _field(default: Any, description: str, declared: Knob) -> Any:
    """A pydantic field with a tunable's bounds (those left ``None`` are not set)."""
    return Field(
        default, description=description, gt=declared.gt, ge=declared.ge, lt=declared.lt, le=declared.le
    )


def core_settings(core: type[Any]) -> type[_Frozen]:
    """The settings model of the parameter dataclass ``core`` (``XxxSettings``, described by
    ``core``'s docstring): one field per tunable, with its default, bounds and description."""
    hints = get_type_hints(core)
    fields: dict[str, Any] = {}
    for item, declared in knobs(core):
        default = item.default.value if isinstance(item.default, enum.Enum) else item.default
        fields[item.name] = (
            _written(hints[item.name]),
            _field(default, declared.description, declared),
        )
    return create_model(
        f"{core.__name__}Settings", __base__=_Frozen, __doc__=core.__doc__, __module__=__name__, **fields
    )


def override_of(
    settings: type[_Frozen],
    group: str,
    doc: str,
    *,
    keys: tuple[str, ...] | None = None,
    base: type[_Frozen] = _Frozen,
) -> type[_Frozen]:
    """The per-target override of ``defaults.<group>`` (``XxxOverride``): the ``keys`` of the
    ``settings`` model (all by default), each optional (``None`` keeps the default) with the same
    type and bounds; ``base`` may bring validators."""
    fields: dict[str, Any] = {}
    for key, info in settings.model_fields.items():
        if keys is None or key in keys:
            annotation: Any = info.annotation
            optional: Any = annotation | None
            if info.metadata:
                optional = Annotated[(optional, *info.metadata)]
            fields[key] = (optional, Field(None, description=f"Overrides defaults.{group}.{key}."))
    name = settings.__name__.removesuffix("Settings") + "Override"
    return create_model(name, __base__=base, __doc__=doc, __module__=__name__, **fields)


def per_target(core: type[Any]) -> tuple[str, ...]:
    """The tunables of ``core`` a target may override."""
    return tuple(item.name for item, declared in knobs(core) if declared.per_target)


if TYPE_CHECKING:

    class _Derived(_Frozen):
        """A settings model built at run time from the declarations (:mod:`rollbackd.knobs`): the
        type checker sees its fields as ``Any``; code outside the configuration reads the typed,
        resolved values (:mod:`rollbackd.config.resolve`)."""

        def __init__(self, **values: Any) -> None: ...

        def __getattr__(self, name: str) -> Any: ...

    SloSettings: TypeAlias = _Derived
    SloOverride: TypeAlias = _Derived
    SeveritySettings: TypeAlias = _Derived
    DetectionSettings: TypeAlias = _Derived
    DetectionOverride: TypeAlias = _Derived
    PolicySettings: TypeAlias = _Derived
    PolicyOverride: TypeAlias = _Derived
else:
    SloSettings = core_settings(Slo)
    SloOverride = override_of(
        SloSettings,
        "slo",
        "Per-target SLO: each key given replaces the one in ``defaults.slo``.",
        keys=per_target(Slo),
    )
    SeveritySettings = core_settings(Severity)
    DetectionSettings = core_settings(Detection)
    DetectionOverride = override_of(
        DetectionSettings,
        "detection",
        "Per-target detection: each key given replaces the one in ``defaults.detection``.",
        keys=per_target(Detection),
    )
    PolicySettings = core_settings(Policy)
    PolicyOverride = override_of(
        PolicySettings,
        "policy",
        "Per-target policy: each key given replaces the one in ``defaults.policy`` (the hourly cap is global"
        " and cannot be overridden per target).",
        keys=per_target(Policy),
    )


def _template_problems(model: BaseModel, names: tuple[str, ...]) -> list[InitErrorDetails]:
    problems: list[InitErrorDetails] = []
    for name in names:
        template = getattr(model, name)
        if template is None:
            continue
        problem = template_problem(template)
        if problem is not None:
            problems.append(
                _problem("promql_template", "PromQL template {problem}", (name,), template, problem=problem)
            )
    return problems


class _Templates(_Frozen):
    """Checks the PromQL templates of :class:`QuerySettings` and its override."""

    @model_validator(mode="after")
    def _templates(self) -> Self:
        _raise(type(self).__name__, _template_problems(self, ("requests", "errors", "latency_buckets")))
        return self


class QuerySettings(_Templates):
    """How the metrics are read: a preset (``default``, ``kube-prometheus``, ``istio``, ``otel``;
    docs/metrics.md) and keys replacing the preset's. Templates' placeholders: ``{selector}``
    (label matchers chosen by rollbackd), ``{by}`` (the group labels) and ``{window}`` (the
    evaluation interval, e.g. ``10s``). A key left out (null) is the preset's."""

    preset: PresetName = Field(
        "default",
        description="The metric shape to read: default (labels namespace, deployment), kube-prometheus "
        "(ServiceMonitor series: namespace, pod), istio (istio_requests_total, destination_workload), "
        "otel (http_server_request_duration_seconds, k8s_deployment_name). In a target: left out keeps "
        "the defaults' queries, a name starts from that preset alone.",
    )
    requests: str | None = Field(None, description="Requests served per series over the interval.")
    errors: str | None = Field(None, description="Failed requests per series over the interval.")
    latency_buckets: str | None = Field(
        None, description="Latency histogram buckets per series over the interval."
    )
    group_labels: tuple[LabelName, ...] | None = Field(
        None,
        min_length=1,
        description="Labels that tell the baseline and candidate series apart (for {by} and {selector}).",
    )
    namespace_label: LabelName | None = Field(
        None, description="The group label holding the target's namespace ('namespace' in most presets)."
    )
    deployment_label: LabelName | None = Field(
        None, description="The group label holding the side's Deployment ('deployment' in most presets)."
    )
    deployment_from: LabelName | None = Field(
        None,
        description="A label holding pod names, when the series carry no Deployment label: each side is "
        "selected by its pods' names (<deployment>-<hash>-<suffix>) and the templates derive "
        "deployment_label from it with label_replace (kube-prometheus: pod).",
    )
    bucket_unit_s: float | None = Field(
        None,
        gt=0,
        le=HOUR,
        description="Seconds per unit of the latency buckets' le (istio: 0.001, milliseconds).",
    )


if TYPE_CHECKING:
    QueryOverride: TypeAlias = _Derived
else:
    QueryOverride = override_of(
        QuerySettings,
        "queries",
        "Per-target queries: a preset named here starts from that preset alone (with this target's keys);"
        " otherwise each key given replaces the one in ``defaults.queries``.",
        base=_Templates,
    )


class HealthSettings(_Frozen):
    """HTTP health probes of the targets' ``health`` URLs."""

    timeout_s: float = Field(
        2.0, ge=MIN_TIMEOUT_S, le=MAX_TIMEOUT_S, description="Timeout of one health probe."
    )
    concurrency: int = Field(100, ge=1, le=MAX_CONCURRENCY, description="Most probes in flight at once.")


#: An environment variable name.
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
#: An HTTP header name (RFC 9110 token).
HEADER_NAME_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
#: Headers the Prometheus client writes itself: configuring them would break the queries.
RESERVED_HEADERS = frozenset(
    {"accept", "accept-encoding", "connection", "content-length", "content-type", "host", "transfer-encoding"}
)


#: Headers whose value is a credential: never written in the file, only read from a file or the
#: environment.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


class HeaderSecret(_Frozen):
    """A header value kept out of the file: read from a file or an environment variable at start."""

    file: str | None = Field(
        None, min_length=1, description="File holding the value (e.g. a mounted Secret)."
    )
    env: str | None = Field(
        None, pattern=ENV_NAME_PATTERN, description="Environment variable holding the value (its name only)."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> HeaderSecret:
        if bool(self.file) == bool(self.env):
            _raise("HeaderSecret", [
                _problem("one_source", "give exactly one of file or env (where the header's value is read)",
                         (), self.model_dump())
            ])
        return self


def _header_kind(value: object) -> str:
    return "secret" if isinstance(value, dict | HeaderSecret) else "value"


#: A header's value: written as is, or read from a file or an environment variable.
HeaderValue = Annotated[
    Annotated[str, Tag("value")] | Annotated[HeaderSecret, Tag("secret")],
    Discriminator(_header_kind),
]


class BasicAuthSettings(_Frozen):
    """HTTP basic authentication: a user name and a password kept out of the file."""

    username: str = Field(..., min_length=1, description="The user name.")
    password_file: str | None = Field(
        None, min_length=1, description="File holding the password (e.g. a mounted Secret)."
    )
    password_env: str | None = Field(
        None,
        pattern=ENV_NAME_PATTERN,
        description="Environment variable holding the password (its name, never the password itself).",
    )

    @field_validator("username")
    @classmethod
    def _no_colon(cls, value: str) -> str:
        if ":" in value:
            raise ValueError("a basic-auth user name cannot contain ':' (the password is given apart)")
        return value

    @model_validator(mode="after")
    def _one_password(self) -> BasicAuthSettings:
        if bool(self.password_file) == bool(self.password_env):
            _raise("BasicAuthSettings", [
                _problem("one_secret",
                         "give exactly one of password_file or password_env (the password never goes in "
                         "this file)", ("password_file",), self.password_file)
            ])
        return self


class BackendTlsSettings(_Frozen):
    """TLS towards the metrics backend (https:// URLs only)."""

    ca_file: str | None = Field(
        None, min_length=1,
        description="CA bundle (PEM) that signed the backend's certificate (default: the system's CAs).",
    )
    cert_file: str | None = Field(
        None, min_length=1, description="Client certificate (PEM), for backends that require one (mTLS)."
    )
    key_file: str | None = Field(
        None, min_length=1, description="Private key (PEM) of the client certificate."
    )
    server_name: str | None = Field(
        None,
        min_length=1,
        pattern=r"^[^\s/:]+$",
        description="Name the backend's certificate must carry, when it differs from the URL's host (and "
        "the SNI name sent).",
    )
    insecure_skip_verify: bool = Field(
        False,
        description="Accept any certificate, unchecked: anyone on the path can read and change the metrics. "
        "Logged as a warning at start; for a first try only.",
    )

    @model_validator(mode="after")
    def _pairs(self) -> BackendTlsSettings:
        problems: list[InitErrorDetails] = []
        if self.key_file and not self.cert_file:
            problems.append(
                _problem("key_without_cert", "key_file needs cert_file", ("key_file",), self.key_file)
            )
        if self.insecure_skip_verify and (self.ca_file or self.server_name):
            problems.append(_problem(
                "insecure_and_checked",
                "insecure_skip_verify checks nothing, so ca_file and server_name would be ignored: drop "
                "insecure_skip_verify (preferred) or them",
                ("insecure_skip_verify",), self.insecure_skip_verify,
            ))
        _raise("BackendTlsSettings", problems)
        return self


class PrometheusSettings(_Frozen):
    """Where the metrics come from: Prometheus or any server of its query API (Thanos Query, Mimir,
    Cortex, VictoriaMetrics), with its credentials, TLS and headers. Secrets are never written here,
    only where to read them (a file or an environment variable)."""

    url: Url = Field(
        "http://prometheus:9090",
        description="Base URL of the Prometheus HTTP API, without /api/v1; a path prefix is kept "
        "(https://mimir/prometheus, http://vmselect:8481/select/0/prometheus).",
    )
    bearer_token_file: str | None = Field(
        None,
        min_length=1,
        description="File holding a bearer token sent as 'Authorization: Bearer ...' (e.g. a service "
        "account token); read again when it changes, and before retrying a query answered 401.",
    )
    bearer_token_env: str | None = Field(
        None,
        pattern=ENV_NAME_PATTERN,
        description="Environment variable holding a bearer token (its name, never the token itself).",
    )
    basic_auth: BasicAuthSettings | None = Field(None, description=BasicAuthSettings.__doc__)
    headers: dict[Annotated[str, Field(pattern=HEADER_NAME_PATTERN)], HeaderValue] = Field(
        {},
        description="Extra HTTP headers of every query, e.g. X-Scope-OrgID: tenant-a (Mimir, Cortex). A "
        "value is written as is, or read at start from {file: PATH} or {env: NAME} when it is a secret.",
    )
    tls: BackendTlsSettings = Field(BackendTlsSettings(), description=BackendTlsSettings.__doc__)
    timeout_s: float = Field(5.0, ge=MIN_TIMEOUT_S, le=MAX_TIMEOUT_S, description="Timeout of one query.")
    retries: int = Field(
        2, ge=0, le=MAX_RETRIES, description="Retries of a failed query (temporary errors only)."
    )
    backoff_initial_s: float = Field(
        0.2,
        ge=MIN_BACKOFF_S,
        le=MAX_BACKOFF_S,
        description="Pause before the first retry; doubles with each retry, with jitter.",
    )
    backoff_max_s: float = Field(
        2.0, ge=MIN_BACKOFF_S, le=MAX_BACKOFF_S, description="Longest pause between retries."
    )
    scrape_interval_s: float = Field(
        15.0,
        ge=MIN_PERIOD_S,
        le=HOUR,
        description="How often Prometheus scrapes the targets. Queries look back at least two scrapes "
        "(max(interval_s, 2 x this)) and bring the counts back to one interval.",
    )
    query_shards: int = Field(
        2,
        ge=1,
        le=16,
        description="Split the targets into this many parts, each asked with its own queries at the same "
        "time: Prometheus evaluates one query on one core, and the latency-bucket query of many targets "
        "is most of a tick's wait. Queries per tick: 3 x this, whatever the number of targets.",
    )
    max_answer_bytes: int | None = Field(
        None,
        ge=65_536,
        le=1_073_741_824,
        description="Largest answer body read from Prometheus, in bytes; a larger answer is not read "
        "further, its targets are inconclusive for the tick, and it counts as a source error of kind "
        "'oversized'. "
        "Default (null): max(4 MiB, 8 KiB x number of targets), three times what the default queries "
        "return; raise it if your query templates return more series per target.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> PrometheusSettings:
        problems: list[InitErrorDetails] = []
        if self.backoff_max_s < self.backoff_initial_s:
            problems.append(_problem("backoff_order", "must be at least backoff_initial_s ({initial})",
                                     ("backoff_max_s",), self.backoff_max_s, initial=self.backoff_initial_s))
        problems.extend(self._url_problems())
        if self.bearer_token_file and self.bearer_token_env:
            problems.append(_problem("one_secret", "give bearer_token_file or bearer_token_env, not both",
                                     ("bearer_token_env",), self.bearer_token_env))
        if self.basic_auth is not None and (self.bearer_token_file or self.bearer_token_env):
            problems.append(_problem(
                "one_authorization",
                "give a bearer token or basic_auth, not both: both go in the Authorization header",
                ("basic_auth",), None,
            ))
        authorizing = self.basic_auth is not None or self.bearer_token_file or self.bearer_token_env
        for name, value in self.headers.items():
            lowered = name.lower()
            if lowered in RESERVED_HEADERS:
                problems.append(_problem("reserved_header",
                                         "{name} is written by rollbackd itself for every query: remove it",
                                         ("headers", name), None, name=name))
            elif lowered == "authorization" and authorizing:
                problems.append(_problem(
                    "one_authorization",
                    "the Authorization header comes from bearer_token_file, bearer_token_env or basic_auth "
                    "here: remove it from headers (or those)", ("headers", name), None,
                ))
            elif lowered in CREDENTIAL_HEADERS and isinstance(value, str):
                # Never quote the value: it is a credential.
                problems.append(_problem(
                    "inline_secret",
                    "{name} carries credentials, which never go in this file: use bearer_token_file or "
                    "basic_auth, or read the value from {file: PATH} or {env: NAME}",
                    ("headers", name), None, name=name,
                ))
            if isinstance(value, str) and ("\r" in value or "\n" in value):
                problems.append(_problem("header_value", "a header value cannot contain a line break",
                                         ("headers", name), None))
        if self.tls != BackendTlsSettings() and not self.url.startswith("https://"):
            problems.append(_problem(
                "tls_needs_https", "TLS settings apply to https:// URLs only: write the url with https://",
                ("tls",), None,
            ))
        _raise("PrometheusSettings", problems)
        return self

    def _url_problems(self) -> list[InitErrorDetails]:
        rest = self.url.split("://", 1)[1]
        authority = rest.split("/", 1)[0]
        problems: list[InitErrorDetails] = []
        if "@" in authority:
            # Never quote the URL: it holds a password.
            problems.append(_problem(
                "credentials_in_url",
                "holds credentials (user:password@): put the user in basic_auth.username and the "
                "password in a file or an environment variable (basic_auth.password_file or password_env)",
                ("url",), None,
            ))
        elif "?" in rest or "#" in rest:
            problems.append(_problem(
                "url_query",
                "must not have a query (?...) or fragment (#...): give the base URL, e.g. "
                "https://thanos-query:9090 or http://vmselect:8481/select/0/prometheus",
                ("url",), None,
            ))
        elif rest.rstrip("/").endswith("/api/v1"):
            problems.append(_problem(
                "url_api_path", "must not end with /api/v1: rollbackd adds it; give the base URL",
                ("url",), None,
            ))
        return problems


class HttpSettings(_Frozen):
    """The daemon's own HTTP server."""

    host: str = Field("0.0.0.0", description="Address of the HTTP server (/healthz, /readyz, /metrics, API).")
    port: int = Field(8080, ge=0, le=65535, description="Port of the HTTP server (0 picks a free one).")


class LogSettings(_Frozen):
    """Logging to stderr."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Lowest level logged.")
    format: Literal["json", "text"] = Field("json", description="One JSON object per line, or plain text.")

    @field_validator("level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class SafetySettings(_Frozen):
    """Global safety switches (also toggled at run time through the API)."""

    dry_run: bool = Field(False, description="Decide and publish, but never act.")
    freeze: bool = Field(False, description="Global freeze: no automatic rollback anywhere.")
    switches_poll_s: float = Field(
        2.0,
        ge=MIN_PERIOD_S,
        le=60.0,
        description="How often every replica reads the switches set through the API (freeze, dry-run, "
        "holds) from where they are kept: the longest a switch sent to one replica takes to be obeyed by the "
        "others when the ConfigMap's watch is broken (it tells at once otherwise).",
    )
    switches: Literal["auto", "store", "kubernetes"] = Field(
        "auto",
        description="Where the switches set through the API are kept for every replica: store (the "
        "store's target_state rows; shared only with PostgreSQL), kubernetes (the ConfigMap "
        "switches_configmap in the Lease's namespace, watched by every replica), or auto: the store when "
        "it is PostgreSQL, else the ConfigMap when leader election runs (several replicas, each with its "
        "own SQLite file), else the store.",
    )
    switches_configmap: str | None = Field(
        None,
        pattern=K8S_NAME_PATTERN,
        description="Name of the ConfigMap holding the switches, in the Lease's namespace (default: "
        "<leader_election.lease_name>-switches).",
    )


class KubernetesSettings(_Frozen):
    """Access to the Kubernetes API, used to read release context and to roll back."""

    enabled: bool | Literal["auto"] = Field(
        "auto",
        description="auto: act on the cluster when running in a pod or when a kubeconfig is found; "
        "false: decide only (no cluster access at all).",
    )
    kubeconfig: str | None = Field(
        None,
        description="Path of a kubeconfig file for running outside the cluster "
        "(default: $KUBECONFIG, then ~/.kube/config).",
    )
    context: str | None = Field(None, description="kubeconfig context to use (default: the current one).")
    request_timeout_s: float = Field(
        10.0, ge=MIN_TIMEOUT_S, le=MAX_TIMEOUT_S, description="Timeout of one API request."
    )
    retries: int = Field(
        4, ge=0, le=MAX_RETRIES, description="Retries of a request on temporary errors and 409 conflicts."
    )
    facts_max_age_s: float = Field(
        30.0,
        ge=0,
        le=HOUR,
        description="How long what the cluster says about a breached target (rollback-risk and "
        "fix-forward annotations, revision) is reused instead of read again at every tick; it is always "
        "read afresh before a rollback starts. 0: read at every tick.",
    )
    availability_timeout_s: float = Field(
        300.0,
        ge=MIN_TIMEOUT_S,
        le=DAY,
        description="How long an action waits for the version it rolls back to to serve."
    )


class VerificationSettings(_Frozen):
    """Proving that a rollback worked: the runbook's success criteria over a validation window."""

    window_s: float = Field(
        300.0,
        ge=MIN_PERIOD_S,
        le=DAY,
        description="Validation window: health 2xx, error rate and P95 within the SLO throughout.",
    )
    max_wait_s: float | None = Field(
        None,
        ge=MIN_PERIOD_S,
        le=2 * DAY,
        description="Longest wait for enough traffic or availability to verify (default: 2 x window_s).",
    )
    watch_s: float = Field(
        1800.0,
        ge=0,
        le=DAY,
        description="Post-rollback watch after a verified rollback (the runbook's 30 minutes): a target that "
        "degrades again within it is escalated, never rolled back a second time automatically. 0: no watch.",
    )


class StoreSettings(_Frozen):
    """Where rollbackd keeps its audit log, event outbox and per-target state."""

    url: str | None = Field(
        None,
        repr=False,  # may hold a password: log redacted_url instead
        description="A postgresql:// DSN or a libpq key=value string (host=db dbname=rollbackd ...) for "
        "a shared PostgreSQL database; otherwise the embedded SQLite file: null for "
        "<data_dir>/rollbackd.db, or sqlite:///path/file.db, or a path (relative to data_dir; no '=' "
        "or '@' in it).",
    )
    data_dir: str = Field(
        "/var/lib/rollbackd",
        min_length=1,
        description="Directory of the SQLite file (created when missing).",
    )
    outbox_retention_s: float = Field(
        7 * 24 * 3600.0,
        ge=1,
        le=YEAR,
        description="Delivered events older than this are deleted from the outbox, in seconds.",
    )
    health_interval_s: float = Field(
        5.0,
        ge=0.1,
        le=300,
        description="How often the open store is pinged (each ping may take this long): while it does not "
        "answer, or a write fails, the daemon is not ready and does not act.",
    )

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        store_kind(value)  # ValueError says what is wrong and what to write, never the value
        return value or None

    @property
    def redacted_url(self) -> str | None:
        """``url`` with any password replaced by ``***``, for logs."""
        return redact_url(self.url) if self.url is not None else None


#: An MQTT broker URL: mqtt://host[:port] (default port 1883) or mqtts://host[:port] (TLS, 8883).
MQTT_URL_PATTERN = r"^mqtts?://[^\s/?#]+/?$"
#: An MQTT topic prefix: levels separated by "/", no wildcards, no empty level.
TOPIC_PREFIX_PATTERN = r"^[^/#+\s]+(/[^/#+\s]+)*$"


class MqttTlsSettings(_Frozen):
    """TLS towards the broker (mqtts:// URLs only)."""

    ca_file: str | None = Field(
        None, description="CA bundle (PEM) that signed the broker's certificate (default: the system's CAs)."
    )
    cert_file: str | None = Field(None, description="Client certificate (PEM), for brokers that require one.")
    key_file: str | None = Field(None, description="Private key (PEM) of the client certificate.")
    insecure: bool = Field(
        False, description="Skip checking the broker's host name against its certificate (tests only)."
    )


class MqttSettings(_Frozen):
    """Events to an MQTT broker: <prefix>/v1/<namespace>/<target>/events/<type> at QoS 1, a retained
    <prefix>/v1/<namespace>/<target>/status, and a retained <prefix>/v1/daemon/<instance>/status."""

    enabled: bool = Field(False, description="Publish events to the broker.")
    url: str = Field(
        "mqtt://mosquitto:1883",
        pattern=MQTT_URL_PATTERN,
        description="The broker: mqtt://host[:port] (1883) or mqtts://host[:port] (TLS, 8883).",
    )
    topic_prefix: str = Field(
        "rollbackd", pattern=TOPIC_PREFIX_PATTERN, description="First level(s) of every topic."
    )
    instance: str | None = Field(
        None,
        pattern=r"^[^/#+\s]+$",
        description="This daemon in the liveness topic <prefix>/v1/daemon/<instance>/status "
        "(default: the host name, i.e. the pod name in Kubernetes).",
    )
    client_id: str | None = Field(None, description="MQTT client identifier (default: rollbackd-<instance>).")
    username: str | None = Field(None, description="User name, if the broker wants one.")
    password_env: str | None = Field(
        None, description="Name of the environment variable holding the password (never the password itself)."
    )
    password_file: str | None = Field(None, description="File holding the password (e.g. a mounted Secret).")
    tls: MqttTlsSettings = Field(MqttTlsSettings(), description=MqttTlsSettings.__doc__)
    keepalive_s: int = Field(30, ge=5, le=65535, description="MQTT keepalive; the broker declares the "
                             "daemon offline (its last will) after 1.5 x this without a sign of life.")
    timeout_s: float = Field(
        10.0, ge=MIN_TIMEOUT_S, le=MAX_TIMEOUT_S, description="Timeout of connecting and of one publish."
    )
    reconnect_max_s: float = Field(
        30.0,
        ge=MIN_BACKOFF_S,
        le=MAX_BACKOFF_S,
        description="Longest pause between reconnection attempts (jittered, doubling from 0.5s)."
    )
    qos: Literal[1] = Field(1, description="QoS of event messages: always 1 (at least once).")

    @model_validator(mode="after")
    def _consistent(self) -> MqttSettings:
        problems: list[InitErrorDetails] = []
        if self.password_env and self.password_file:
            problems.append(
                _problem("one_secret", "give password_env or password_file, not both", ("password_file",),
                         self.password_file)
            )
        tls = self.tls
        if not self.url.startswith("mqtts://") and tls != MqttTlsSettings():
            problems.append(
                _problem("tls_needs_mqtts", "TLS settings apply to mqtts:// URLs only (url is {url})",
                         ("tls",), tls.model_dump(), url=self.url)
            )
        if tls.key_file and not tls.cert_file:
            problems.append(
                _problem("key_without_cert", "key_file needs cert_file", ("tls", "key_file"), tls.key_file)
            )
        _raise("MqttSettings", problems)
        return self


#: What a webhook is sent: the CloudEvent (signed the rollbackd way or the Standard Webhooks way)
#: or a chat message.
WebhookFormat = Literal["cloudevents", "slack", "teams", "discord", "standard-webhooks"]
#: Formats that are chat messages: their webhook URL is their credential, they take no secret.
CHAT_FORMATS = frozenset({"slack", "teams", "discord"})


class WebhookSettings(_Frozen):
    """One HTTP endpoint that receives events: the CloudEvent (POST, application/cloudevents+json,
    signed), or a chat message (Slack, Microsoft Teams, Discord)."""

    name: str = Field(
        ...,
        pattern=K8S_NAME_PATTERN,
        description="Unique name: the webhook's delivery cursor (keep it when the URL changes).",
    )
    url: Url = Field(..., description="Where events are POSTed.")
    format: WebhookFormat = Field(
        "cloudevents",
        description="What is POSTed: cloudevents (the event, X-Rollbackd-Signature when a secret is "
        "set), standard-webhooks (the event, signed per the Standard Webhooks spec: needs a whsec_ "
        "secret), or a chat message: slack (Block Kit), teams (an Adaptive Card), discord (an embed).",
    )
    secret_env: str | None = Field(
        None, description="Environment variable holding the HMAC-SHA256 signing secret."
    )
    secret_file: str | None = Field(None, description="File holding the signing secret.")
    status_url: Url | None = Field(
        None,
        description="The status page's external URL that this webhook's chat messages link to "
        "(default: events.status_url; neither: no link).",
    )
    types: tuple[str, ...] = Field(
        ("*",),
        min_length=1,
        description="Event types to send, as glob patterns on the short or full type (rollback.*, "
        "io.rollbackd.hold.*); the default sends all.",
    )
    timeout_s: float = Field(10.0, ge=MIN_TIMEOUT_S, le=MAX_TIMEOUT_S, description="Timeout of one POST.")

    @model_validator(mode="after")
    def _one_secret(self) -> WebhookSettings:
        problems: list[InitErrorDetails] = []
        if self.secret_env and self.secret_file:
            problems.append(_problem("one_secret", "give secret_env or secret_file, not both",
                                     ("secret_file",), self.secret_file))
        secret = "secret_env" if self.secret_env else "secret_file" if self.secret_file else None
        if self.format in CHAT_FORMATS and secret is not None:
            problems.append(_problem(
                "chat_secret",
                "a {format} webhook takes no secret (its URL is its credential): remove {key}, or "
                "set format: standard-webhooks or cloudevents for a signed request",
                (secret,), getattr(self, secret), format=self.format, key=secret,
            ))
        if self.format == "standard-webhooks" and secret is None:
            problems.append(_problem(
                "standard_webhooks_secret",
                "format standard-webhooks signs every request: give secret_env or secret_file "
                "holding a whsec_<base64> secret",
                ("format",), self.format,
            ))
        _raise("WebhookSettings", problems)
        return self


class EventsSettings(_Frozen):
    """Events (CloudEvents 1.0) of every step, from the store's outbox to MQTT, webhooks and
    Kubernetes Events, at least once and in order per target."""

    source: str = Field(
        "/rollbackd", min_length=1, description="The CloudEvents 'source' of every event (a URI reference)."
    )
    mqtt: MqttSettings = Field(MqttSettings(), description=MqttSettings.__doc__)
    webhooks: tuple[WebhookSettings, ...] = Field((), description="HTTP endpoints that receive events.")
    status_url: Url | None = Field(
        None,
        description="The status page's external URL (e.g. https://rollbackd.example.com/), linked from "
        "chat messages; without it they carry no link.",
    )
    dead_letter_after_s: float = Field(
        DAY,
        ge=0,
        le=YEAR,
        description="A sink that keeps failing gives up on an event this much older than now "
        "(dead-lettered, audited, escalated), so that a dead sink cannot keep the outbox from being pruned.",
    )
    dead_letter_after_events: int = Field(
        10000,
        ge=1,
        le=10_000_000,
        description="A sink that keeps failing also gives up on an event once more than this many newer "
        "events wait behind it.",
    )
    kubernetes_events: bool = Field(
        True, description="Also record events on the target's Deployment (kubectl describe shows them)."
    )
    poll_interval_s: float = Field(
        5.0,
        ge=MIN_BACKOFF_S,
        le=HOUR,
        description="How often each sink looks at the outbox when not woken by a new event.",
    )
    retry_initial_s: float = Field(
        1.0, ge=MIN_BACKOFF_S, le=MAX_BACKOFF_S, description="Pause before retrying a failed delivery."
    )
    retry_max_s: float = Field(
        60.0,
        ge=MIN_BACKOFF_S,
        le=MAX_BACKOFF_S,
        description="Longest pause between retries (doubling, jittered).",
    )

    @model_validator(mode="after")
    def _unique_webhooks(self) -> EventsSettings:
        problems: list[InitErrorDetails] = []
        seen: set[str] = set()
        for index, hook in enumerate(self.webhooks):
            if hook.name in seen:
                problems.append(_problem("duplicate_webhook", "webhook name {name} is used twice",
                                         ("webhooks", index, "name"), hook.name, name=hook.name))
            seen.add(hook.name)
        if self.retry_max_s < self.retry_initial_s:
            problems.append(_problem("backoff_order", "must be at least retry_initial_s ({initial})",
                                     ("retry_max_s",), self.retry_max_s, initial=self.retry_initial_s))
        _raise("EventsSettings", problems)
        return self


class LeaderElectionSettings(_Frozen):
    """Several replicas, one actor: leader election on a coordination.k8s.io Lease. Every replica
    collects and judges (a standby is warm); only the leader rolls back. A new leader holds the
    Lease at most lease_duration_s + renew_period_s after the old one was lost."""

    enabled: bool = Field(
        False, description="Compete for the Lease and act only while leading (needs Kubernetes access)."
    )
    namespace: str | None = Field(
        None,
        pattern=K8S_NAME_PATTERN,
        description="Namespace of the Lease (default: $POD_NAMESPACE, else 'default').",
    )
    lease_name: str = Field("rollbackd", pattern=K8S_NAME_PATTERN, description="Name of the Lease.")
    lease_duration_s: float = Field(
        10.0,
        ge=1,
        le=HOUR,
        description="How long a leader's claim lasts without renewal; a standby takes over after it.",
    )
    renew_period_s: float = Field(
        2.0,
        ge=MIN_PERIOD_S,
        le=HOUR / 3,
        description="How often the leader renews and standbys look; at most lease_duration_s / 3.",
    )
    identity: str | None = Field(
        None,
        min_length=1,
        description="This replica's name in the Lease, unique per replica (default: $POD_NAME, else "
        "<hostname>-<pid>); best left unset.",
    )

    @model_validator(mode="after")
    def _periods(self) -> LeaderElectionSettings:
        if self.lease_duration_s < 3 * self.renew_period_s:
            _raise("LeaderElectionSettings", [
                _problem(
                    "renew_period",
                    "must be at most lease_duration_s / 3 ({most}): a leader needs two renewal attempts "
                    "before it steps down",
                    ("renew_period_s",),
                    self.renew_period_s,
                    most=f"{self.lease_duration_s / 3:g}",
                )
            ])
        return self


class ApiSettings(_Frozen):
    """Access to the HTTP API. The write endpoints (freeze, hold, dry-run) need
    'Authorization: Bearer <token>'; without a token configured they are refused."""

    token_file: str | None = Field(
        None,
        min_length=1,
        description="File holding the API token (e.g. a mounted Secret); re-read when it changes.",
    )
    token_env: str | None = Field(
        None,
        pattern=ENV_NAME_PATTERN,
        description="Name of an environment variable holding the API token (never the token itself).",
    )
    token_name: str = Field(
        "api-token",
        min_length=1,
        max_length=100,
        description="Who a request bearing the token is, in the audit trail and on the status page "
        "(e.g. the team or the Secret's name): every switch and operator action records it with its reason.",
    )
    protect_reads: bool = Field(
        False,
        description="Require the token for the read endpoints too (API and status page; /healthz, "
        "/readyz and /metrics stay open).",
    )
    allow_unauthenticated_writes: bool = Field(
        False,
        description="Let anyone who reaches the port use the write endpoints (local demos and tests only).",
    )
    verdicts_open: bool = Field(
        False,
        description="Serve the verdict endpoints (.../verdict, .../rollback-check) without the token even "
        "when protect_reads is set: a Flagger webhook cannot send an Authorization header. They change "
        "nothing and tell only a target's verdict.",
    )

    @model_validator(mode="after")
    def _one_token(self) -> ApiSettings:
        if self.token_file and self.token_env:
            _raise("ApiSettings", [
                _problem(
                    "one_token", "give token_file or token_env, not both", ("token_env",), self.token_env
                )
            ])
        return self


class DiscoverySettings(_Frozen):
    """Opt-in by annotation: teams add a release from its own manifests (annotations on the
    candidate Deployment, see docs/discovery.md) instead of a ``targets`` entry in this file.
    rollbackd watches the Deployments of the allowed namespaces; the file's own targets win over
    annotations for the same release."""

    enabled: bool = Field(False, description="Watch Deployments for rollbackd.io/ annotations.")
    namespaces: tuple[Annotated[str, Field(pattern=K8S_NAME_PATTERN)], ...] = Field(
        (),
        description="Namespaces whose Deployments may opt in (each watched on its own: the chart grants "
        "list and watch on Deployments there). Required unless all_namespaces is true.",
    )
    all_namespaces: bool = Field(
        False,
        description="Watch Deployments in every namespace (needs a ClusterRole); with namespaces listed, "
        "only those may opt in and an annotated Deployment elsewhere is refused (an Event and a status "
        "page line say so).",
    )
    max_slo_error_rate: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Loosest error-rate SLO an annotation may ask for (rollbackd.io/slo-error-rate); a "
        "looser one is refused (the Deployment is not watched until it is fixed). Default: no cap.",
    )
    max_slo_p95_ms: float | None = Field(
        None,
        gt=0,
        le=HOUR * 1000,
        description="Loosest P95 ceiling, in milliseconds, an annotation may ask for "
        "(rollbackd.io/slo-p95-ms); a looser one is refused. Default: no cap.",
    )
    backoff_initial_s: float = Field(
        0.5,
        ge=MIN_BACKOFF_S,
        le=MAX_BACKOFF_S,
        description="Pause before watching again after the watch broke; doubles with each failure, "
        "with jitter.",
    )
    backoff_max_s: float = Field(
        30.0, ge=MIN_BACKOFF_S, le=MAX_BACKOFF_S, description="Longest pause before watching again."
    )
    watch_timeout_s: float = Field(
        300.0,
        ge=1,
        le=HOUR,
        description="How long one watch request lasts before the API server ends it and rollbackd lists "
        "and watches again (a silent connection is given up after this plus request_timeout_s).",
    )

    @model_validator(mode="after")
    def _where(self) -> DiscoverySettings:
        problems: list[InitErrorDetails] = []
        if self.enabled and not self.namespaces and not self.all_namespaces:
            problems.append(_problem(
                "discovery_namespaces",
                "list the namespaces whose Deployments may opt in (namespaces: [shop, payments]), or set "
                "all_namespaces: true to watch every namespace",
                ("namespaces",),
                [],
            ))
        if self.backoff_max_s < self.backoff_initial_s:
            problems.append(_problem(
                "backoff_order",
                "must be at least backoff_initial_s ({initial})",
                ("backoff_max_s",),
                self.backoff_max_s,
                initial=self.backoff_initial_s,
            ))
        _raise("DiscoverySettings", problems)
        return self


#: What rollbackd does about a target whose objects a GitOps tool reconciles from Git.
GitOpsMode = Literal["suspend", "refuse", "ignore"]

#: A label key (optionally prefixed by a DNS subdomain), e.g. ``app.kubernetes.io/instance``.
LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)


class ArgoCdSettings(_Frozen):
    """How Argo CD marks what it reconciles: the same values as its argocd-cm ConfigMap."""

    namespace: str = Field(
        "argocd",
        pattern=K8S_NAME_PATTERN,
        description="The namespace of Argo CD's control plane, where its Applications live unless a "
        "tracking id names another (<namespace>_<application>, with applications in any namespace).",
    )
    tracking_method: Literal["annotation", "annotation+label", "label"] = Field(
        "annotation",
        description="argocd-cm application.resourceTrackingMethod: annotation and annotation+label track by "
        "the argocd.argoproj.io/tracking-id annotation, label by the instance label.",
    )
    instance_label: str = Field(
        "app.kubernetes.io/instance",
        pattern=LABEL_KEY_PATTERN,
        description="argocd-cm application.instanceLabelKey: the label naming the Application when "
        "tracking_method is label.",
    )


class GitOpsSettings(_Frozen):
    """Rollbacks that stay rolled back: before acting, rollbackd looks whether the objects it will
    change are reconciled from Git (Argo CD, Flux), which would put the bad version back."""

    mode: GitOpsMode = Field(
        "suspend",
        description="suspend: turn off the reconciler's automated sync (Argo CD) or suspend it (Flux) before "
        "the rollback's first change; refuse: do not roll back, escalate; ignore: act regardless. A target's "
        "own gitops key overrides it.",
    )
    argocd: ArgoCdSettings = Field(ArgoCdSettings(), description=ArgoCdSettings.__doc__)


class Defaults(_Frozen):
    """Values every target starts from; targets override slo, detection, policy and queries."""

    slo: SloSettings = Field(SloSettings(), description=SloSettings.__doc__)
    severity: SeveritySettings = Field(SeveritySettings(), description=SeveritySettings.__doc__)
    detection: DetectionSettings = Field(DetectionSettings(), description=DetectionSettings.__doc__)
    policy: PolicySettings = Field(PolicySettings(), description=PolicySettings.__doc__)
    queries: QuerySettings = Field(
        QuerySettings(),
        description="The query preset, and PromQL templates and labels replacing the preset's.",
    )


#: Labels a side's ``labels`` never give: their values are the target's namespace and the side's
#: Deployment in every preset but the ones naming them otherwise (checked with the queries).
IMPLIED_LABELS = {"namespace": "the target's 'namespace'", "deployment": "the side's 'deployment'"}


class Side(_Frozen):
    """How to find one side's series: the Deployment name (matched on the ``deployment`` group
    label) and optional extra label values; health endpoints as full URLs. The sides of an
    ``argo-rollout`` target have no Deployment: their pods belong to the Rollout, and labels tell
    them apart (e.g. those of the Rollout's ``canaryMetadata`` / ``stableMetadata``)."""

    deployment: str | None = Field(
        None,
        min_length=1,
        pattern=K8S_NAME_PATTERN,
        description="Name of the Deployment running this version (required, except for argo-rollout "
        "targets, which have none; for a command target, only the deployment label of its series).",
    )
    labels: dict[LabelName, str] = Field(
        default_factory=dict,
        description="Values of the other group labels (queries.group_labels) for this version's series.",
    )
    health: tuple[Url, ...] = Field((), description="Health endpoints of this version, as full http(s) URLs.")

    @model_validator(mode="after")
    def _implied_labels(self) -> Side:
        _raise(
            "Side",
            [
                _problem(
                    "implied_label",
                    "label '{label}' cannot be set here: its value is {source}",
                    ("labels", label),
                    value,
                    label=label,
                    source=source,
                )
                for label, source in IMPLIED_LABELS.items()
                if (value := self.labels.get(label)) is not None
            ],
        )
        return self


#: A DNS name as Istio hosts are written: ``web``, ``web.shop.svc.cluster.local``.
DNS_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

K8sName = Annotated[str, Field(min_length=1, max_length=253, pattern=K8S_NAME_PATTERN)]


class IngressNginxRouterSettings(_Frozen):
    """ingress-nginx: a canary Ingress (annotated ``nginx.ingress.kubernetes.io/canary: "true"``)
    whose ``canary-weight`` sends the canary its share."""

    kind: Literal["ingress-nginx"] = Field(description="ingress-nginx.")
    ingress: K8sName = Field(description="The canary Ingress, in the target's namespace.")


class GatewayApiRouterSettings(_Frozen):
    """Gateway API: an HTTPRoute or GRPCRoute whose rules name the canary and the stable Services as
    weighted backendRefs."""

    kind: Literal["gateway-api"] = Field(description="gateway-api.")
    route: K8sName = Field(description="The route's name, in the target's namespace.")
    route_kind: Literal["HTTPRoute", "GRPCRoute"] = Field(
        "HTTPRoute", description="HTTPRoute or GRPCRoute (gateway.networking.k8s.io/v1)."
    )
    canary_service: K8sName = Field(
        description="The Service of the canary, as the route's backendRefs name it."
    )
    stable_service: K8sName = Field(
        description="The Service of the stable version, as the route's backendRefs name it."
    )

    @model_validator(mode="after")
    def _two_services(self) -> GatewayApiRouterSettings:
        if self.canary_service == self.stable_service:
            _raise("GatewayApiRouterSettings", [_problem(
                "same_service",
                "canary_service and stable_service are both '{name}': name the canary's Service and the"
                " stable version's Service (two backendRefs of the route)",
                ("stable_service",), self.stable_service, name=self.stable_service,
            )])
        return self


class IstioDestinationSettings(_Frozen):
    """An Istio destination: a host (a Service, short or fully qualified) and, optionally, a subset of
    its DestinationRule."""

    host: str = Field(min_length=1, max_length=253, pattern=DNS_NAME_PATTERN,
                      description="The destination's host: a Service name (web) or its qualified name.")
    subset: K8sName | None = Field(None, description="The DestinationRule subset, when one host serves both.")


class IstioRouterSettings(_Frozen):
    """Istio: a VirtualService whose http routes send weighted shares to the canary and the stable
    destinations (two hosts, or one host and two subsets)."""

    kind: Literal["istio"] = Field(description="istio.")
    virtual_service: K8sName = Field(description="The VirtualService's name, in the target's namespace.")
    canary: IstioDestinationSettings = Field(description="The canary's destination (host, subset).")
    stable: IstioDestinationSettings = Field(description="The stable version's destination (host, subset).")

    @model_validator(mode="after")
    def _two_destinations(self) -> IstioRouterSettings:
        if self.canary == self.stable:
            _raise("IstioRouterSettings", [_problem(
                "same_destination",
                "canary and stable are the same destination: give them different hosts, or the same host"
                " with different subsets",
                ("stable",), None,
            )])
        return self


#: Environment variables rollbackd gives a rollback command itself (see :class:`CommandSettings`).
COMMAND_ENV_PREFIX = "ROLLBACKD_"
#: Longest a rollback command may run, in seconds.
MAX_COMMAND_TIMEOUT_S = 6 * HOUR


class CommandSettings(_Frozen):
    """command: the command that rolls the release back (e.g. ``./scripts/deploy.sh rollback``), run
    without a shell, in its own process group, with the target and the decision in its environment
    (``ROLLBACKD_TARGET``, ``ROLLBACKD_NAMESPACE``, ``ROLLBACKD_DECISION``, ``ROLLBACKD_REASON``,
    ``ROLLBACKD_REVISION``, ``ROLLBACKD_RUN_ID``). Exit code 0 is a done rollback, anything else a
    failed one."""

    argv: tuple[Annotated[str, Field(min_length=1)], ...] = Field(
        min_length=1,
        description="The program and its arguments, one item each (no shell: write [sh, -c, '...'] for "
        "one). A relative program is found in cwd when it holds a '/', else on the daemon's PATH.",
    )
    cwd: str | None = Field(
        None,
        min_length=1,
        pattern=r"^/",
        description="Absolute working directory of the command (default: the daemon's).",
    )
    env: dict[Annotated[str, Field(pattern=LABEL_NAME_PATTERN)], str] = Field(
        default_factory=dict,
        repr=False,  # may hold credentials: never in a repr or a log line
        description="Environment of the command, besides PATH (the daemon's) and the ROLLBACKD_* "
        "variables; nothing else of the daemon's environment is passed on.",
    )
    timeout_s: float = Field(
        300.0,
        ge=MIN_TIMEOUT_S,
        le=MAX_COMMAND_TIMEOUT_S,
        description="The command and every process it started are ended when it runs longer than this "
        "(SIGTERM to its process group, SIGKILL after kill_grace_s): a failed rollback.",
    )
    kill_grace_s: float = Field(
        10.0,
        ge=0,
        le=MAX_TIMEOUT_S,
        description="Time between SIGTERM and SIGKILL when the command is ended.",
    )

    @model_validator(mode="after")
    def _own_env(self) -> CommandSettings:
        _raise("CommandSettings", [
            _problem(
                "reserved_env",
                "environment variable '{name}' is set by rollbackd (every {prefix}* name is): rename it",
                ("env", name),
                None,
                name=name,
                prefix=COMMAND_ENV_PREFIX,
            )
            for name in self.env
            if name.startswith(COMMAND_ENV_PREFIX) or name == "PATH"
        ])
        return self


class ConfigLeverSettings(_Frozen):
    """config: the ConfigMaps whose data is the release, and the Deployments that read them. rollbackd
    keeps each version of their data it sees (Kubernetes keeps none); a change of the data is a
    release, and rolling it back puts the previous data back and restarts ``restart`` the way
    ``kubectl rollout restart`` does."""

    configmaps: tuple[K8sName, ...] = Field(
        min_length=1, description="The ConfigMaps, in the target's namespace, whose versions are kept."
    )
    restart: tuple[K8sName, ...] = Field(
        (), description="The Deployments, in the target's namespace, restarted once the data is restored."
    )
    keep_versions: int = Field(
        20, ge=2, le=1000, description="Versions kept per ConfigMap (the newest; at least 2)."
    )
    keep_age_s: float = Field(
        30 * DAY,
        ge=HOUR,
        le=YEAR,
        description="Versions older than this are dropped, except the 2 newest of each ConfigMap.",
    )
    secrets: Literal[False] = Field(
        False,
        description="Secrets are never kept: rollbackd stores no Secret data, encrypted or not "
        "(docs/levers.md says why).",
    )


#: How traffic reaches a canary, chosen by ``kind``.
RouterSettings: TypeAlias = Annotated[
    IngressNginxRouterSettings | GatewayApiRouterSettings | IstioRouterSettings,
    Field(discriminator="kind"),
]
#: The router kinds, as ``router.kind`` names them.
ROUTER_KINDS = ("ingress-nginx", "gateway-api", "istio")

#: The placeholder of a flag store's URL, body and JSON path that the flag's name fills in.
FLAG_PLACEHOLDER = "{flag}"
#: The parameter of a flag store's SQL statements that the flag's name is bound to.
FLAG_SQL_PARAMETER = "%(flag)s"


class FlagReadSettings(_Frozen):
    """How to read the flag back over HTTP: a GET of ``url`` whose JSON answer holds the flag's
    state at ``json_path`` (dot-separated keys and list indexes, ``{flag}`` filled in)."""

    url: Url = Field(..., description="The URL to GET ({flag} is replaced by the flag's name).")
    json_path: str = Field(
        "enabled",
        min_length=1,
        description="Where the state is in the JSON answer: dot-separated keys (features.{flag}.enabled).",
    )


class FlagHttpStore(_Frozen):
    """A flag kept behind the application's admin API: one request turns it off."""

    kind: Literal["http"] = Field(description="http: the application's admin API.")
    url: Url = Field(
        ...,
        description="The admin endpoint, e.g. http://checkout.shop:8080/api/admin/features ({flag} is "
        "replaced by the flag's name).",
    )
    method: Literal["POST", "PUT", "PATCH"] = Field("POST", description="The request's method.")
    headers: dict[Annotated[str, Field(pattern=HEADER_NAME_PATTERN)], str] = Field(
        {}, description="Extra headers (no credentials: the token comes from token_file)."
    )
    token_file: str | None = Field(
        None,
        min_length=1,
        description="File holding the bearer token (a mounted Secret), read again for every request; sent "
        "as 'Authorization: Bearer ...' and never logged.",
    )
    body: dict[str, Any] = Field(
        {"feature_name": FLAG_PLACEHOLDER, "enabled": False},
        description="The JSON body; a text '{flag}' anywhere in it is replaced by the flag's name.",
    )
    success_statuses: tuple[Annotated[int, Field(ge=200, le=299)], ...] = Field(
        (200, 201, 202, 204), min_length=1, description="The answers that mean the flag is off."
    )
    read: FlagReadSettings | None = Field(
        None,
        description="Read the flag back before (already off: nothing to do) and after the request (still "
        "on: failed).",
    )
    timeout_s: float = Field(5.0, ge=MIN_TIMEOUT_S, le=MAX_TIMEOUT_S, description="Timeout of one request.")

    @model_validator(mode="after")
    def _no_credentials_inline(self) -> FlagHttpStore:
        problems = [
            _problem(
                "inline_secret",
                "{name} carries credentials, which never go in this file: put the token in a file "
                "(a mounted Secret) and name it in token_file",
                ("headers", name), None, name=name,
            )
            for name in self.headers
            if name.lower() in CREDENTIAL_HEADERS
        ]
        _raise("FlagHttpStore", problems)
        return self


class FlagSqlStore(_Frozen):
    """A flag kept in a PostgreSQL table: one parameterised statement turns it off."""

    kind: Literal["sql"] = Field(description="sql: a PostgreSQL table, through psycopg.")
    dsn_file: str = Field(
        ...,
        min_length=1,
        description="File holding the PostgreSQL DSN (a mounted Secret, e.g. postgresql://user:pw@db/app), "
        "read again for every rollback; never logged.",
    )
    update: str = Field(
        "UPDATE feature_flags SET enabled = false WHERE name = %(flag)s",
        min_length=1,
        description="The statement that turns the flag off, with %(flag)s for its name; run in a "
        "transaction, and failed when it changes no row.",
    )
    select: str = Field(
        "SELECT enabled FROM feature_flags WHERE name = %(flag)s",
        min_length=1,
        description="The query that reads the flag's state (one row, one column), before and after.",
    )
    timeout_s: float = Field(5.0, ge=MIN_TIMEOUT_S, le=MAX_TIMEOUT_S, description="Timeout of one attempt.")

    @model_validator(mode="after")
    def _parameterised(self) -> FlagSqlStore:
        problems = [
            _problem(
                "flag_parameter",
                "must name the flag with the parameter %(flag)s (never write the name into the SQL)",
                (key,), None,
            )
            for key in ("update", "select")
            if FLAG_SQL_PARAMETER not in getattr(self, key)
        ]
        _raise("FlagSqlStore", problems)
        return self


class FlagSettings(_Frozen):
    """feature-flag: the flag a release turned on, and where it is kept."""

    name: str = Field(..., min_length=1, max_length=200, description="The flag's name, e.g. new_checkout.")
    store: Annotated[FlagHttpStore | FlagSqlStore, Field(discriminator="kind")] = Field(
        ..., description="Where the flag is kept: kind http (the admin API) or sql (a PostgreSQL table)."
    )
    attempts: int = Field(
        3, ge=1, le=10, description="Tries of a store that does not answer (down, 5xx), with backoff between."
    )
    backoff_initial_s: float = Field(
        0.5, ge=MIN_BACKOFF_S, le=MAX_BACKOFF_S, description="Pause before the first retry; doubles after."
    )


#: What each strategy needs, for messages: key → (strategies that use it, what it is).
_STRATEGY_KEYS: dict[str, tuple[frozenset[Strategy], str]] = {
    "baseline": (
        frozenset({Strategy.CANARY, Strategy.BLUE_GREEN, Strategy.ARGO_ROLLOUT}), "the version to go back to"
    ),
    "service": (frozenset({Strategy.BLUE_GREEN}), "the Service whose selector picks the colour"),
    "rollout": (frozenset({Strategy.ARGO_ROLLOUT}), "the Argo Rollouts Rollout"),
    "command": (frozenset({Strategy.COMMAND}), "the command that rolls the release back"),
    "config": (frozenset({Strategy.CONFIG}), "the ConfigMaps whose data is the release"),
    "flag": (frozenset({Strategy.FEATURE_FLAG}), "the feature flag to turn off, and where it is kept"),
}
#: Keys that only a canary uses, one of which it needs.
_ROUTING_KEYS = ("router", "ingress")

#: Why the sides of an argo-rollout target name no Deployment, and what to do instead.
ROLLOUT_SIDES = (
    "the pods of both versions belong to the Rollout: tell the sides apart with labels (e.g. role: "
    "canary / role: stable, set by the Rollout's canaryMetadata / stableMetadata)"
)


class TargetSettings(_Frozen):
    """One release to watch."""

    name: str = Field(
        ...,
        min_length=1,
        pattern=K8S_NAME_PATTERN,
        description="The target's name, unique within its namespace.",
    )
    namespace: str = Field(
        "default",
        min_length=1,
        pattern=K8S_NAME_PATTERN,
        description="Kubernetes namespace of the release.",
    )
    strategy: Strategy = Field(
        ...,
        description="How the release is rolled out: canary, blue-green, deployment, argo-rollout, command, "
        "config or feature-flag.",
    )
    baseline: Side | None = Field(
        None,
        description="The version to go back to (stable / the old colour); canary and blue-green only.",
    )
    candidate: Side = Field(..., description="The new version being judged.")
    router: RouterSettings | None = Field(
        None,
        description="canary: how traffic reaches the canary (kind: ingress-nginx, gateway-api or istio).",
    )
    ingress: str | None = Field(
        None,
        min_length=1,
        pattern=K8S_NAME_PATTERN,
        description="canary: the canary Ingress (shorthand for router: {kind: ingress-nginx, ingress: ...}).",
    )
    service: str | None = Field(
        None,
        min_length=1,
        pattern=K8S_NAME_PATTERN,
        description="blue-green: the Service whose selector picks the colour.",
    )
    rollout: str | None = Field(
        None,
        min_length=1,
        pattern=K8S_NAME_PATTERN,
        description="argo-rollout: the Rollout (argoproj.io/v1alpha1) to abort.",
    )
    command: CommandSettings | None = Field(
        None, description="command: the command that rolls the release back (argv, cwd, env, timeout_s)."
    )
    config: ConfigLeverSettings | None = Field(
        None, description="config: the ConfigMaps whose data is the release (configmaps, restart, keep_*)."
    )
    flag: FlagSettings | None = Field(
        None,
        description="feature-flag: the flag to turn off ({name, store: {kind: http | sql, ...}}).",
    )
    dry_run: bool = Field(
        False,
        description="Judge this target and publish, but never act on it (like safety.dry_run, for this "
        "target only): for a release a partner rolls back itself, e.g. Flagger asking the verdict.",
    )
    slo: SloOverride = Field(SloOverride(), description="Overrides of defaults.slo for this target.")
    detection: DetectionOverride = Field(
        DetectionOverride(),
        description="Overrides of defaults.detection for this target.",
    )
    policy: PolicyOverride = Field(
        PolicyOverride(),
        description="Overrides of defaults.policy for this target.",
    )
    queries: QueryOverride = Field(
        QueryOverride(),
        description="Overrides of defaults.queries for this target.",
    )
    gitops: GitOpsMode | None = Field(
        None,
        description="What to do when the objects of this target are reconciled from Git: suspend, refuse or "
        "ignore (default: gitops.mode).",
    )

    @model_validator(mode="after")
    def _strategy_fields(self) -> TargetSettings:
        problems: list[InitErrorDetails] = []
        for key, (strategies, what) in _STRATEGY_KEYS.items():
            value = getattr(self, key)
            if self.strategy in strategies and value is None:
                problems.append(
                    _problem(
                        "missing_for_strategy",
                        "missing required key '{key}' for strategy '{strategy}' ({what})",
                        (key,),
                        None,
                        key=key,
                        strategy=self.strategy.value,
                        what=what,
                    )
                )
            elif self.strategy not in strategies and value is not None:
                problems.append(
                    _problem(
                        "not_for_strategy",
                        "key '{key}' does not apply to strategy '{strategy}' (only to {users})",
                        (key,),
                        value,
                        key=key,
                        strategy=self.strategy.value,
                        users=_and(sorted(s.value for s in strategies)),
                    )
                )
        problems.extend(self._side_problems())
        problems.extend(self._routing_problems())
        _raise("TargetSettings", problems)
        return self

    def _side_problems(self) -> list[InitErrorDetails]:
        """Each side names its Deployment, except on an argo-rollout target, where none may."""
        problems: list[InitErrorDetails] = []
        for side_name in ("baseline", "candidate"):
            side: Side | None = getattr(self, side_name)
            if side is None:
                continue
            if self.strategy is Strategy.ARGO_ROLLOUT and side.deployment is not None:
                problems.append(_problem(
                    "not_for_strategy",
                    "key 'deployment' does not apply to strategy 'argo-rollout': {why}",
                    (side_name, "deployment"),
                    side.deployment,
                    why=ROLLOUT_SIDES,
                ))
            elif self.strategy is not Strategy.ARGO_ROLLOUT and side.deployment is None:
                what = ("the value of the deployment label of its series; no Deployment is looked for"
                        if self.strategy is Strategy.COMMAND else "the Deployment running this version")
                problems.append(_problem(
                    "missing_for_strategy",
                    "missing required key 'deployment' for strategy '{strategy}' ({what})",
                    (side_name, "deployment"),
                    None,
                    strategy=self.strategy.value,
                    what=what,
                ))
        return problems

    def _routing_problems(self) -> list[InitErrorDetails]:
        given = [key for key in _ROUTING_KEYS if getattr(self, key) is not None]
        if self.strategy is not Strategy.CANARY:
            return [
                _problem(
                    "not_for_strategy",
                    "key '{key}' does not apply to strategy '{strategy}' (only to canary)",
                    (key,),
                    None,
                    key=key,
                    strategy=self.strategy.value,
                )
                for key in given
            ]
        if not given:
            return [_problem(
                "missing_for_strategy",
                "missing required key 'router' for strategy 'canary' (how traffic reaches the canary:"
                " router: {kind: ingress-nginx | gateway-api | istio, ...}, or the shorthand ingress: NAME"
                " for an ingress-nginx canary Ingress)",
                ("router",),
                None,
            )]
        if len(given) > 1:
            return [_problem(
                "router_twice",
                "give either 'router' or 'ingress' (shorthand for router: {kind: ingress-nginx, ingress:"
                " NAME}), not both",
                ("ingress",),
                self.ingress,
            )]
        return []

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def traffic_router(self) -> RouterSettings | None:
        """How traffic reaches the canary: ``router``, or ``ingress`` as an ingress-nginx router;
        ``None`` for strategies other than canary."""
        if self.router is not None:
            return self.router
        if self.ingress is not None:
            return IngressNginxRouterSettings(kind="ingress-nginx", ingress=self.ingress)
        return None


def _and(words: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return " and ".join(words) if len(words) < 3 else ", ".join(words[:-1]) + " and " + words[-1]


def _label_problems(index: int, target: TargetSettings, queries: QueryPreset) -> list[InitErrorDetails]:
    """Every side must give a value to every group label, and only to group labels (but those
    holding the namespace and the Deployment); and the two sides must select different series."""
    group_labels = queries.group_labels
    implied = {
        queries.namespace_label: "the target's 'namespace'",
        queries.deployment_label: "the side's 'deployment'",
    }
    problems: list[InitErrorDetails] = []
    if target.strategy is Strategy.ARGO_ROLLOUT and queries.deployment_label in group_labels:
        where = ("queries", "group_labels") if target.queries.group_labels else ()
        problems.append(
            _problem(
                "deployment_label",
                "group label '{label}' has no value for an argo-rollout target: {why}; set this "
                "target's queries.group_labels to them (e.g. [namespace, role])",
                ("targets", index, *where),
                list(group_labels),
                label=queries.deployment_label,
                why=ROLLOUT_SIDES,
            )
        )
        return problems
    refs: dict[str, tuple[str | None, ...]] = {}
    for side_name in ("baseline", "candidate"):
        side: Side | None = getattr(target, side_name)
        if side is None:
            continue
        loc: tuple[int | str, ...] = ("targets", index, side_name, "labels")
        for label in group_labels:
            if label not in implied and label not in side.labels:
                problems.append(
                    _problem(
                        "missing_group_label",
                        "missing value for group label '{label}' (queries.group_labels is {labels})",
                        loc,
                        dict(side.labels),
                        label=label,
                        labels=", ".join(group_labels),
                    )
                )
        for label, value in side.labels.items():
            if label in implied and label in group_labels and label not in IMPLIED_LABELS:
                problems.append(
                    _problem(
                        "implied_label",
                        "label '{label}' cannot be set here: its value is {source}",
                        (*loc, label),
                        value,
                        label=label,
                        source=implied[label],
                    )
                )
            elif label not in group_labels:
                problems.append(
                    _problem(
                        "unused_label",
                        "label '{label}' is not a group label (queries.group_labels is {labels})"
                        " and would be ignored",
                        (*loc, label),
                        value,
                        label=label,
                        labels=", ".join(group_labels),
                    )
                )
        refs[side_name] = tuple(
            target.namespace
            if label == queries.namespace_label
            else side.deployment
            if label == queries.deployment_label
            else side.labels.get(label)
            for label in group_labels
        )
    if len(refs) == 2 and refs["baseline"] == refs["candidate"]:
        problems.append(
            _problem(
                "same_series",
                "baseline and candidate select the same series (group labels {labels}): give them"
                " different values, or add a group label that tells them apart",
                ("targets", index, "candidate"),
                None,
                labels=", ".join(group_labels),
            )
        )
    return problems


class Settings(_Frozen):
    """The whole configuration file."""

    interval_s: float = Field(
        10.0, ge=MIN_PERIOD_S, le=HOUR, description="Seconds between evaluations of every target."
    )
    prometheus: PrometheusSettings = Field(PrometheusSettings(), description=PrometheusSettings.__doc__)
    health: HealthSettings = Field(HealthSettings(), description=HealthSettings.__doc__)
    http: HttpSettings = Field(HttpSettings(), description=HttpSettings.__doc__)
    log: LogSettings = Field(LogSettings(), description=LogSettings.__doc__)
    safety: SafetySettings = Field(SafetySettings(), description=SafetySettings.__doc__)
    kubernetes: KubernetesSettings = Field(KubernetesSettings(), description=KubernetesSettings.__doc__)
    verification: VerificationSettings = Field(
        VerificationSettings(), description=VerificationSettings.__doc__
    )
    store: StoreSettings = Field(StoreSettings(), description=StoreSettings.__doc__)
    events: EventsSettings = Field(EventsSettings(), description=EventsSettings.__doc__)
    leader_election: LeaderElectionSettings = Field(
        LeaderElectionSettings(), description=LeaderElectionSettings.__doc__
    )
    api: ApiSettings = Field(ApiSettings(), description=ApiSettings.__doc__)
    gitops: GitOpsSettings = Field(GitOpsSettings(), description=GitOpsSettings.__doc__)
    defaults: Defaults = Field(Defaults(), description=Defaults.__doc__)
    discovery: DiscoverySettings = Field(DiscoverySettings(), description=DiscoverySettings.__doc__)
    targets: tuple[TargetSettings, ...] = Field((), description="The releases to watch.")

    @model_validator(mode="after")
    def _unique_targets(self) -> Settings:
        problems: list[InitErrorDetails] = []
        first: dict[str, int] = {}
        for index, target in enumerate(self.targets):
            if target.key in first:
                problems.append(
                    _problem(
                        "duplicate_target",
                        "target {key} is listed twice (first as targets[{first}])",
                        ("targets", index),
                        target.name,
                        key=target.key,
                        first=first[target.key],
                    )
                )
            first.setdefault(target.key, index)
            queries = resolve_queries(self.defaults.queries, target.queries)
            problems.extend(_label_problems(index, target, queries))
            problems.extend(
                _window_problems(("targets", index, "detection"), target.detection, self.interval_s)
            )
        problems.extend(_window_problems(("defaults", "detection"), self.defaults.detection, self.interval_s))
        _raise("Settings", problems)
        return self


def _window_problems(
    loc: tuple[int | str, ...], detection: DetectionSettings | DetectionOverride, interval_s: float
) -> list[InitErrorDetails]:
    """Windows that would span more than :data:`MAX_WINDOW_INTERVALS` intervals."""
    problems: list[InitErrorDetails] = []
    for name in ("window_s", "baseline_window_s"):
        window_s = getattr(detection, name)
        if window_s is not None and window_s / interval_s > MAX_WINDOW_INTERVALS:
            problems.append(_problem(
                "window_intervals",
                "spans {count} intervals of interval_s ({interval}): at most {most}, since every target keeps"
                " its window in memory; shorten the window or lengthen interval_s",
                (*loc, name),
                window_s,
                count=f"{window_s / interval_s:.0f}",
                interval=f"{interval_s:g}",
                most=str(MAX_WINDOW_INTERVALS),
            ))
    return problems


def check_target(settings: Settings, target: TargetSettings) -> None:
    """Raise the :class:`ValidationError` ``target`` would cause as ``targets[0]`` of ``settings``
    (group labels without values, windows too long for the interval); nothing when it fits. For
    targets that do not come from the file (opt-in by annotation)."""
    problems = _label_problems(0, target, resolve_queries(settings.defaults.queries, target.queries))
    problems.extend(_window_problems(("targets", 0, "detection"), target.detection, settings.interval_s))
    _raise("Settings", problems)
