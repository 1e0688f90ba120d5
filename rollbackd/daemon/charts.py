"""The status page's charts: inline SVG drawn on the server from a target's ``series`` document
(:func:`~rollbackd.daemon.views.series_view`), no script and no external asset.

Per target, four small charts: the error rate and the P95 of the candidate and of the baseline,
over the detection window and since the release, each with its SLO line and the marks (first bad
interval, rollback decided, action done, verification's verdict) that fall in its time span.
Every element a reader (or a test) looks for carries what it shows in ``data-*`` attributes: the
value of the SLO line, how many points a line has, the time of a mark (wall-clock UTC, as the API
gives it). The SLO line's label sits in the right margin, outside the plot area, level with its
line: it never covers a line or a mark.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rollbackd.daemon.docread import Doc as _Doc
from rollbackd.daemon.docread import escape as _e
from rollbackd.daemon.docread import items as _list
from rollbackd.daemon.docread import number as _num
from rollbackd.daemon.docread import obj as _obj
from rollbackd.daemon.docread import when as _when
from rollbackd.daemon.jsonify import JsonValue

#: Size of one chart (SVG user units, drawn at that size in CSS pixels).
WIDTH, HEIGHT = 320, 120
#: The plot area's margins: left for the value labels, right for the SLO line's label (two short
#: lines: "SLO" and its value), bottom for the time labels.
LEFT, RIGHT, TOP, BOTTOM = 46, 50, 8, 18
#: Line height of the SLO label's two lines (its font is 10 px).
_LABEL_LINE = 11

#: Headroom above the highest value or SLO, so that the SLO line never sits on the frame.
_HEADROOM = 1.15


@dataclass(frozen=True, slots=True)
class Signal:
    key: str
    title: str
    slo_key: str

    def text(self, value: float) -> str:
        return f"{value * 100:.2f}%" if self.key == "error_rate" else f"{value:.0f} ms"


SIGNALS = (Signal("error_rate", "error rate", "error_rate"), Signal("p95_ms", "P95", "p95_ms"))
SPANS = (("window", "detection window"), ("release", "since the release"))
SIDES = ("candidate", "baseline")


@dataclass(frozen=True, slots=True)
class Scale:
    """Maps times (Unix seconds) and values to the plot area."""

    t0: float
    t1: float
    top: float

    def x(self, t: float) -> float:
        span = self.t1 - self.t0
        share = 0.5 if span <= 0 else (t - self.t0) / span
        return LEFT + share * (WIDTH - LEFT - RIGHT)

    def y(self, value: float) -> float:
        return TOP + (1.0 - value / self.top) * (HEIGHT - TOP - BOTTOM)


def render_charts(series: _Doc | None) -> str:
    """The charts of one target (an empty string when the document has no series)."""
    if series is None:
        return ""
    slo = _obj(series.get("slo")) or {}
    marks = [m for m in (_obj(v) for v in _list(series.get("marks"))) if m is not None]
    figures = []
    for span, span_title in SPANS:
        points = [p for p in (_obj(v) for v in _list(series.get(span))) if p is not None]
        for signal in SIGNALS:
            figures.append(_chart(signal, span, span_title, points, _num(slo.get(signal.slo_key)), marks))
    legend = (
        '<p class="legend"><span class="key candidate">candidate</span>'
        '<span class="key baseline">baseline</span><span class="key slo">SLO</span>'
        '<span class="key mark">marks: first bad interval, decision, action, verification</span></p>'
    )
    return f'<section class="charts">{"".join(figures)}{legend}</section>'


def _values(points: Sequence[_Doc], side: str, key: str) -> list[tuple[float, float]]:
    values = []
    for point in points:
        t, data = _moment(point.get("t")), _obj(point.get(side))
        value = None if data is None else _num(data.get(key))
        if t is not None and value is not None:
            values.append((t, value))
    return values


def _chart(
    signal: Signal,
    span: str,
    span_title: str,
    points: Sequence[_Doc],
    slo: float | None,
    marks: Sequence[_Doc],
) -> str:
    caption = f"{signal.title} · {span_title}"
    svg = chart_svg(signal, points, slo, marks, caption=caption)
    if svg is None:
        return (
            f'<figure class="chart empty" data-signal="{signal.key}" data-span="{span}">'
            f"<figcaption>{_e(caption)}</figcaption><p class=\"muted\">no data yet</p></figure>"
        )
    return (
        f'<figure class="chart" data-signal="{signal.key}" data-span="{span}">'
        f"<figcaption>{_e(caption)}</figcaption>{svg}</figure>"
    )


def chart_svg(
    signal: Signal,
    points: Sequence[_Doc],
    slo: float | None,
    marks: Sequence[_Doc],
    *,
    caption: str,
    at: tuple[float, float] | None = None,
) -> str | None:
    """One chart as an ``<svg>`` element (``at`` x, y when nested in another): the candidate's
    and the baseline's line of ``signal`` over ``points`` (``series_view`` points), the SLO line
    and the ``marks`` in its span; ``None`` when there is no point to draw."""
    lines = {side: _values(points, side, signal.key) for side in SIDES}
    times = [t for t in (_moment(p.get("start")) for p in points[:1]) if t is not None]
    times += [t for t in (_moment(p.get("t")) for p in points) if t is not None]
    if not times:
        return None
    highest = max((v for line in lines.values() for _, v in line), default=0.0)
    top = max(highest, slo or 0.0) * _HEADROOM or 1.0
    scale = Scale(min(times), max(times), top)
    parts = [
        f'<rect class="plot" x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" '
        f'height="{HEIGHT - TOP - BOTTOM}"/>',
        _label(LEFT - 4, scale.y(top) + 4, signal.text(top), anchor="end"),
        _label(LEFT - 4, scale.y(0.0), signal.text(0.0), anchor="end"),
        _label(LEFT, HEIGHT - 4, f"-{_ago(scale.t1 - scale.t0)}", anchor="start"),
        _label(WIDTH - RIGHT, HEIGHT - 4, "latest", anchor="end"),
    ]
    if slo is not None:
        y = scale.y(slo)
        parts.append(
            f'<line class="slo" data-value="{slo:g}" x1="{LEFT}" x2="{WIDTH - RIGHT}" '
            f'y1="{y:.2f}" y2="{y:.2f}"><title>SLO {_e(signal.text(slo))}</title></line>'
        )
        parts.append(_slo_label(y, signal.text(slo)))
    for side in reversed(SIDES):  # the candidate on top
        line = lines[side]
        coords = " ".join(f"{scale.x(t):.2f},{scale.y(v):.2f}" for t, v in line)
        parts.append(
            f'<polyline class="line {side}" data-side="{side}" data-points="{len(line)}" points="{coords}">'
            f"<title>{side}</title></polyline>"
        )
    for mark in marks:
        t = _moment(mark.get("t"))
        if t is None or not scale.t0 <= t <= scale.t1:
            continue
        x = scale.x(t)
        kind = _e(str(mark.get("kind") or ""))
        shown = _e(str(mark.get("t")))
        parts.append(
            f'<line class="mark {kind}" data-kind="{kind}" data-t="{shown}" x1="{x:.2f}" x2="{x:.2f}" '
            f'y1="{TOP}" y2="{HEIGHT - BOTTOM}"><title>{_e(str(mark.get("label") or ""))}</title></line>'
        )
    placed = "" if at is None else f'x="{at[0]:g}" y="{at[1]:g}" '
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" {placed}width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{_e(caption)}" '
        f'data-signal="{signal.key}" data-t0="{scale.t0:g}" data-t1="{scale.t1:g}" data-top="{top:g}" '
        f'data-plot-top="{TOP}" data-plot-bottom="{HEIGHT - BOTTOM}">'
        f'{"".join(parts)}</svg>'
    )


def _moment(value: JsonValue) -> float | None:
    """A point's or a mark's time: the API's wall-clock UTC text (as Unix seconds), or seconds
    (a backtest's recording)."""
    seconds = _num(value)
    return seconds if seconds is not None else _when(value)


def _label(x: float, y: float, text: str, *, anchor: str, css: str = "axis") -> str:
    return f'<text class="{css}" x="{x:.2f}" y="{y:.2f}" text-anchor="{anchor}">{_e(text)}</text>'


def _slo_label(y: float, value: str) -> str:
    """The SLO line's label: "SLO" over its value, in the right margin (outside the plot area, so
    it never covers a line or a mark), centred on the line's height and kept inside the chart."""
    middle = min(max(y, TOP + _LABEL_LINE), HEIGHT - BOTTOM - _LABEL_LINE / 2)
    x = WIDTH - RIGHT + 4
    return (
        f'<text class="slo-label" x="{x:.2f}" y="{middle - 2:.2f}" text-anchor="start">'
        f'<tspan x="{x:.2f}" y="{middle - 2:.2f}">SLO</tspan>'
        f'<tspan x="{x:.2f}" y="{middle - 2 + _LABEL_LINE:.2f}">{_e(value)}</tspan></text>'
    )


def _ago(seconds: float) -> str:
    total = max(0, round(seconds))
    if total < 120:
        return f"{total}s"
    if total < 7200:
        return f"{total // 60}m"
    return f"{total // 3600}h"


#: The charts' part of the page's style sheet.
CSS = """
.charts{display:flex;flex-wrap:wrap;gap:4px 14px;margin:8px 0 4px}
.chart{margin:0}.chart figcaption{font-size:12px;color:var(--muted)}
.chart svg{display:block;background:#fff}
.chart .plot{fill:#fafbfc;stroke:var(--line)}
.chart .axis,.chart .slo-label{font-size:10px;fill:var(--muted)}
.chart .slo-label{fill:#c62828}
.chart .slo{stroke:#c62828;stroke-dasharray:4 3;stroke-width:1}
.chart .line{fill:none;stroke-width:1.6;stroke-linejoin:round}
.chart .line.candidate{stroke:#e67700}.chart .line.baseline{stroke:#1c7ed6}
.chart .mark{stroke-width:1.4}.chart .mark.first-bad{stroke:#f08c00;stroke-dasharray:2 2}
.chart .mark.decision{stroke:#c62828}.chart .mark.action{stroke:#7048e8}
.chart .mark.verdict{stroke:#2b8a3e}
.legend{flex-basis:100%;margin:0;font-size:12px;color:var(--muted);display:flex;gap:14px}
.legend .key::before{content:"";display:inline-block;width:14px;height:3px;margin-right:4px;
vertical-align:middle;background:var(--muted)}
.legend .candidate::before{background:#e67700}.legend .baseline::before{background:#1c7ed6}
.legend .slo::before{background:#c62828}
"""
