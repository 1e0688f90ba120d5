"""Batched PromQL for many targets: pure functions, no I/O.

Every tick, rollbackd sends one query per metric (requests, errors, latency buckets) and shard for
all the targets that share the same :class:`~rollbackd.sources.base.QueryTemplates`, instead of one
query per target. The templates' placeholders are filled as:

- ``{by}``: the group labels joined by ``", "`` (``namespace, deployment``);
- ``{selector}``: one matcher per group label over the union of the targets' values
  (``namespace="shop",deployment=~"checkout-canary|checkout-stable"``), values regex-escaped and
  quoted as PromQL strings;
- ``{window}``: the window as a Prometheus duration (``10s``, ``1m30s``).

When the series carry pod names instead of a Deployment label (``QueryTemplates.pod_prefix``),
the Deployment's matcher is on the pod label: ``pod=~"(?:checkout-canary|checkout)-[a-z0-9]+-[a-z0-9]+"``.

Result series are mapped back to ``(target key, side)`` by their group-label values, so series the
union selector matches but no target asked for are ignored. A group's targets are split into a few
shards (two by default), each its own batch, so that Prometheus evaluates them on several cores;
a batch whose selector would grow past ``max_selector_chars`` is split further.
"""

from __future__ import annotations

import enum
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from rollbackd.config.presets import POD_NAME_SUFFIX
from rollbackd.sources.base import QueryTemplates, SeriesRef, SourceTarget

#: Characters with a meaning in RE2 syntax (the regex dialect of PromQL's ``=~``).
_RE2_SPECIAL = frozenset("\\.+*?()|[]{}^$")

#: Default cap on the length of one ``{selector}``; batches beyond it are split.
DEFAULT_MAX_SELECTOR_CHARS = 200_000

#: Default number of shards of each group's targets: Prometheus evaluates one query on one core,
#: and the latency-bucket query of a large group is most of a tick's wait.
DEFAULT_SHARDS = 2


class Side(enum.StrEnum):
    BASELINE = "baseline"
    CANDIDATE = "candidate"


class Metric(enum.StrEnum):
    REQUESTS = "requests"
    ERRORS = "errors"
    LATENCY_BUCKETS = "latency_buckets"


#: The group-label values of one series, in ``group_labels`` order (absent labels as ``""``).
SeriesKey = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Batch:
    """The queries of one tick for targets that share ``templates``, and how to map results back.

    ``sides`` maps the group-label values of a series to every ``(target key, side)`` reading it
    (two targets may share a baseline).
    """

    templates: QueryTemplates
    queries: Mapping[Metric, str]
    sides: Mapping[SeriesKey, tuple[tuple[str, Side], ...]]

    @property
    def target_keys(self) -> frozenset[str]:
        return frozenset(key for owners in self.sides.values() for key, _ in owners)


@dataclass(frozen=True, slots=True)
class Plan:
    """All batches of one tick, plus the targets that cannot be queried and why."""

    batches: tuple[Batch, ...]
    invalid: Mapping[str, str]

    @property
    def query_count(self) -> int:
        return sum(len(batch.queries) for batch in self.batches)


def format_duration(seconds: float) -> str:
    """A Prometheus duration for ``seconds``: whole milliseconds rounded up, at least ``1s``,
    written with the largest units first (``90`` → ``1m30s``, ``2.5`` → ``2s500ms``)."""
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a window must be a positive number of seconds, not {seconds!r}")
    ms = max(1000, math.ceil(round(seconds * 1000, 6)))
    parts: list[str] = []
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        amount, ms = divmod(ms, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)


def escape_regex(value: str) -> str:
    """``value`` as an RE2 pattern matching exactly that text (PromQL regexes are anchored)."""
    return "".join("\\" + ch if ch in _RE2_SPECIAL else ch for ch in value)


def quote_string(value: str) -> str:
    """``value`` as a double-quoted PromQL string literal."""
    out = ['"']
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def label_matcher(label: str, values: Iterable[str]) -> str:
    """One matcher for ``label`` over ``values``: ``=`` for one value, ``=~`` with an escaped
    alternation (sorted, de-duplicated) for several."""
    unique = sorted(set(values))
    if not unique:
        raise ValueError(f"no values for label {label!r}")
    if len(unique) == 1:
        return f"{label}={quote_string(unique[0])}"
    return f"{label}=~{quote_string('|'.join(escape_regex(v) for v in unique))}"


def pod_prefix_matcher(pod_label: str, values: Iterable[str]) -> str:
    """One matcher for the pods of the Deployments named ``values``: ``pod_label`` is one of their
    pod names (``<deployment>-<hash>-<suffix>``; the two last parts never hold a ``-``, so a
    Deployment's pods are never taken for another's)."""
    unique = sorted(set(values))
    if not unique:
        raise ValueError(f"no values for label {pod_label!r}")
    names = "|".join(escape_regex(v) for v in unique)
    names = names if len(unique) == 1 else f"(?:{names})"
    return f"{pod_label}=~{quote_string(names + POD_NAME_SUFFIX)}"


def build_selector(
    group_labels: Sequence[str], keys: Iterable[SeriesKey], pod_prefix: tuple[str, str] | None = None
) -> str:
    """Matchers (comma-joined, no braces) selecting at least every series in ``keys``; the group
    label ``pod_prefix[0]``, when given, is matched as the prefix of the pod label ``pod_prefix[1]``."""
    keys = list(keys)
    return ",".join(
        pod_prefix_matcher(pod_prefix[1], (key[i] for key in keys))
        if pod_prefix is not None and label == pod_prefix[0]
        else label_matcher(label, (key[i] for key in keys))
        for i, label in enumerate(group_labels)
    )


def series_key(labels: Mapping[str, str], group_labels: Sequence[str]) -> SeriesKey:
    """The group-label values of a result series; a label Prometheus left out counts as ``""``."""
    return tuple(labels.get(label, "") for label in group_labels)


def key_getter(group_labels: Sequence[str]) -> Callable[[Mapping[str, str]], SeriesKey]:
    """A function equal to ``series_key(labels, group_labels)``, made for the many thousands of
    result series of one tick: a C-level lookup when every group label is present, which is the
    usual case (Prometheus leaves out only labels whose value is empty)."""
    group_labels = tuple(group_labels)
    if not group_labels:
        return lambda labels: ()
    getter = operator.itemgetter(*group_labels)
    single = len(group_labels) == 1

    def key(labels: Mapping[str, str]) -> SeriesKey:
        try:
            found = getter(labels)
        except KeyError:
            return series_key(labels, group_labels)
        return (found,) if single else found

    return key


def ref_key(ref: SeriesRef, group_labels: Sequence[str]) -> SeriesKey:
    """The group-label values a :class:`SeriesRef` names, in ``group_labels`` order.

    Raises :class:`ValueError` when the reference does not name exactly the group labels: any
    other label cannot be told apart after ``sum by ({by})``.
    """
    given = dict(ref.labels)
    if len(given) != len(ref.labels):
        raise ValueError(f"series reference names a label twice: {ref.labels!r}")
    if set(given) != set(group_labels):
        raise ValueError(
            f"series reference labels {sorted(given)} differ from the group labels {list(group_labels)}"
        )
    return tuple(given[label] for label in group_labels)


def render(template: str, *, by: str, selector: str, window: str) -> str:
    """Fill one template's placeholders (``str.format`` syntax: literal braces are doubled)."""
    return template.format(by=by, selector=selector, window=window)


def check_templates(templates: QueryTemplates) -> str | None:
    """Why ``templates`` cannot be used, or ``None`` when they render."""
    if not templates.group_labels:
        return "queries need at least one group label"
    for metric in Metric:
        try:
            render(getattr(templates, metric.value), by="l", selector='l="v"', window="1s")
        except (KeyError, IndexError, ValueError) as exc:
            return f"query template {metric.value!r} does not render: {exc!r}"
    return None


def plan(
    targets: Sequence[SourceTarget],
    *,
    window_s: float,
    max_selector_chars: int = DEFAULT_MAX_SELECTOR_CHARS,
    shards: int = DEFAULT_SHARDS,
) -> Plan:
    """Group ``targets`` by templates and build each group's queries for a ``window_s`` window.

    Each group's targets are split into ``shards`` batches of about the same size (fewer when the
    group has fewer targets), so that Prometheus answers them concurrently, on as many cores;
    the number of queries stays the same whatever the number of targets. Targets whose templates
    do not render or whose series references do not name exactly the group labels are listed in
    :attr:`Plan.invalid` with the reason.
    """
    if shards < 1:
        raise ValueError(f"shards must be at least 1, not {shards!r}")
    window = format_duration(window_s)
    invalid: dict[str, str] = {}
    groups: dict[QueryTemplates, dict[SeriesKey, list[tuple[str, Side]]]] = {}
    template_errors: dict[QueryTemplates, str | None] = {}

    for target in targets:
        templates = target.queries
        if templates not in template_errors:
            template_errors[templates] = check_templates(templates)
        problem = template_errors[templates]
        if problem is not None:
            invalid[target.key] = problem
            continue
        refs = [(Side.CANDIDATE, target.candidate)]
        if target.baseline is not None:
            refs.append((Side.BASELINE, target.baseline))
        try:
            keyed = [(side, ref_key(ref, templates.group_labels)) for side, ref in refs]
        except ValueError as exc:
            invalid[target.key] = str(exc)
            continue
        sides = groups.setdefault(templates, {})
        for side, key in keyed:
            sides.setdefault(key, []).append((target.key, side))

    batches: list[Batch] = []
    for templates, sides in groups.items():
        for shard in _shards(sides, shards):
            for chunk in _chunks(templates.group_labels, shard, max_selector_chars):
                batches.append(_batch(templates, chunk, window))
    return Plan(batches=tuple(batches), invalid=invalid)


def _batch(
    templates: QueryTemplates, sides: Mapping[SeriesKey, list[tuple[str, Side]]], window: str
) -> Batch:
    by = ", ".join(templates.group_labels)
    selector = build_selector(templates.group_labels, sides, templates.pod_prefix)
    queries = {
        metric: render(getattr(templates, metric.value), by=by, selector=selector, window=window)
        for metric in Metric
    }
    return Batch(
        templates=templates,
        queries=queries,
        sides={key: tuple(owners) for key, owners in sides.items()},
    )


def _shards(
    sides: Mapping[SeriesKey, list[tuple[str, Side]]], shards: int
) -> list[dict[SeriesKey, list[tuple[str, Side]]]]:
    """``sides`` split into up to ``shards`` parts with about as many targets each, in order; a
    target's series stay together (a series two targets share is in the part of each)."""
    targets = list(dict.fromkeys(target_key for owners in sides.values() for target_key, _ in owners))
    count = min(shards, len(targets))
    if count <= 1:
        return [dict(sides)]
    part_of = {target_key: index * count // len(targets) for index, target_key in enumerate(targets)}
    parts: list[dict[SeriesKey, list[tuple[str, Side]]]] = [{} for _ in range(count)]
    for key, owners in sides.items():
        for target_key, side in owners:
            parts[part_of[target_key]].setdefault(key, []).append((target_key, side))
    return parts


def _chunks(
    group_labels: Sequence[str],
    sides: Mapping[SeriesKey, list[tuple[str, Side]]],
    max_selector_chars: int,
) -> list[dict[SeriesKey, list[tuple[str, Side]]]]:
    """Split series so each chunk's selector stays under ``max_selector_chars``, keeping both sides
    of a target in the same chunk. A single target larger than the cap gets a chunk of its own.
    A series shared by targets in different chunks is queried in each of them."""
    by_target: dict[str, list[tuple[SeriesKey, Side]]] = {}
    for key, owners in sides.items():
        for target_key, side in owners:
            by_target.setdefault(target_key, []).append((key, side))

    def cost(value: str) -> int:
        # The escaped value inside the quoted alternation, plus its "|" separator.
        return len(quote_string(escape_regex(value))) - 1

    # Each label's matcher, and the pod-name pattern of a Deployment matched through its pods.
    overhead = sum(len(label) + 5 for label in group_labels) + 2 * len(POD_NAME_SUFFIX) + 8
    chunks: list[dict[SeriesKey, list[tuple[str, Side]]]] = []
    current: dict[SeriesKey, list[tuple[str, Side]]] = {}
    seen: list[set[str]] = [set() for _ in group_labels]
    size = overhead

    for target_key, owned in by_target.items():
        new_values = [
            {key[i] for key, _ in owned} - seen[i] for i in range(len(group_labels))
        ]
        added = sum(cost(v) for values in new_values for v in values)
        if current and size + added > max_selector_chars:
            chunks.append(current)
            current = {}
            seen = [set() for _ in group_labels]
            size = overhead
            new_values = [{key[i] for key, _ in owned} for i in range(len(group_labels))]
            added = sum(cost(v) for values in new_values for v in values)
        for key, side in owned:
            current.setdefault(key, []).append((target_key, side))
        for i, values in enumerate(new_values):
            seen[i] |= values
        size += added
    if current:
        chunks.append(current)
    return chunks
