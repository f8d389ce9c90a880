"""Server-side SVG charts: pure functions from numbers to SVG text.

No JavaScript library and no network: the page is readable with scripts off, and a chart
is testable as a string. Every piece of text that can come from traffic (class labels,
slice values) goes through `_esc`, so a label of `<script>` is drawn as text.
Colours follow the page: blue the primary, purple the candidate, red failing or flagged,
green passing, amber not enough evidence.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from common.sanitize import printable

PRIMARY = "#0969da"
CANDIDATE = "#8250df"
PASS = "#1a7f37"
FAIL = "#cf222e"
AMBER = "#bf8700"
INK = "#1f2328"
MUTED = "#656d76"
GRID = "#d8dee4"
FONT = 'font-family="system-ui, sans-serif" font-size="11"'
MAX_LABEL_CHARS = 14


def _esc(text: object) -> str:
    """Escape any text for SVG (quotes too: it may land in an attribute; control
    characters shown as escapes)."""
    return html.escape(printable(text), quote=True)


def _num(x: float) -> str:
    """Coordinates with two decimals: small SVGs, stable strings in tests."""
    return f"{x:.2f}".rstrip("0").rstrip(".") if x == x else "0"


def _short(text: str, limit: int = MAX_LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _val(x: object) -> float | None:
    """A finite number as float, anything else (None, nan, text) as None."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x) if math.isfinite(x) else None


def pct(x: object, digits: int = 1) -> str:
    """0.9731 -> '97.3%'; missing or undefined -> an em dash."""
    return f"{100.0 * float(x):.{digits}f}%" if _finite(x) else "—"


def _svg(width: int, height: int, label: str, body: Sequence[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{_esc(label)}" {FONT}>'
        f"<title>{_esc(label)}</title>{''.join(body)}</svg>"
    )


def empty_chart(message: str, width: int = 640, height: int = 60) -> str:
    """A placeholder that still says why there is nothing to draw."""
    text = (
        f'<text x="{width / 2}" y="{height / 2 + 4}" text-anchor="middle" '
        f'fill="{MUTED}">{_esc(message)}</text>'
    )
    return _svg(width, height, message, [text])


@dataclass(frozen=True)
class _Frame:
    """Plot area inside the margins, mapping data to pixels."""

    width: int
    height: int
    left: int = 44
    right: int = 12
    top: int = 10
    bottom: int = 24

    @property
    def inner_w(self) -> float:
        return self.width - self.left - self.right

    @property
    def inner_h(self) -> float:
        return self.height - self.top - self.bottom

    def x(self, frac: float) -> float:
        return self.left + frac * self.inner_w

    def y(self, frac: float) -> float:
        return self.top + (1.0 - frac) * self.inner_h


# -- agreement over time ---------------------------------------------------------------


_STEPS = (0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.2, 0.25)


def _y_scale(points: Sequence[Mapping[str, float]], threshold: float | None) -> tuple[float, float]:
    """(lowest value shown, tick step): every rate, the threshold and most of the band.

    The band's 10th percentile, not its minimum, sets the floor, so one sparse bucket with a
    wide interval cannot squash the chart; the band is clipped at the floor instead.
    """
    lows = sorted(p["ci_low"] for p in points if _finite(p.get("ci_low")))
    floors = [min(p["rate"] for p in points)]
    if threshold is not None:
        floors.append(threshold)
    if lows:
        floors.append(lows[len(lows) // 10])
    low = max(0.0, min(floors) - 0.005)
    step = next((s for s in _STEPS if (1.0 - low) / s <= 6), 0.25)
    return max(0.0, math.floor(low / step + 1e-9) * step), step


def _clock(ts: float) -> str:
    return time.strftime("%H:%M", time.gmtime(ts))


def _y_axis(frame: _Frame, y0: float, step: float) -> list[str]:
    parts = []
    digits = 1 if step < 0.01 else 0
    ticks = round((1.0 - y0) / step)
    for i in range(ticks + 1):
        value = min(1.0, y0 + i * step)
        y = frame.y((value - y0) / (1.0 - y0))
        parts.append(
            f'<line x1="{frame.left}" x2="{frame.width - frame.right}" y1="{_num(y)}" '
            f'y2="{_num(y)}" stroke="{GRID}" stroke-width="1"/>'
            f'<text x="{frame.left - 4}" y="{_num(y + 4)}" text-anchor="end" '
            f'fill="{MUTED}">{value * 100:.{digits}f}%</text>'
        )
    return parts


def _time_axis(frame: _Frame, t0: float, t1: float) -> list[str]:
    parts = []
    for i in range(5):
        frac = i / 4
        x = frame.x(frac)
        anchor = "start" if i == 0 else ("end" if i == 4 else "middle")
        parts.append(
            f'<text x="{_num(x)}" y="{frame.height - 6}" text-anchor="{anchor}" '
            f'fill="{MUTED}">{_clock(t0 + frac * (t1 - t0))}</text>'
        )
    return parts


def _runs(points: Sequence[Mapping[str, float]]) -> list[list[Mapping[str, float]]]:
    """Consecutive points with data; a bucket without pairs breaks the line."""
    runs: list[list[Mapping[str, float]]] = [[]]
    for p in points:
        if p.get("pairs", 0) > 0 and _finite(p.get("rate")):
            runs[-1].append(p)
        elif runs[-1]:
            runs.append([])
    return [r for r in runs if r]


def agreement_chart(
    points: Sequence[Mapping[str, float]],
    threshold: float | None = None,
    width: int = 1160,
    height: int = 220,
) -> str:
    """Agreement per time bucket as a line inside its 95% Wilson band.

    `points`: [{t (bucket start, epoch s), pairs, rate, ci_low, ci_high}] in time order.
    `threshold` (the gate's minimum agreement) is drawn as a dashed amber line.
    """
    runs = _runs(points)
    if not runs:
        return empty_chart("no pairs in this window yet", width, height)
    frame = _Frame(width, height)
    y0, step = _y_scale([p for run in runs for p in run], threshold)
    t0 = points[0]["t"]
    t1 = max(points[-1]["t"], t0 + 1)

    def xy(t: float, v: float) -> str:
        frac_y = (min(max(v, y0), 1.0) - y0) / (1.0 - y0) if y0 < 1 else 1.0
        return f"{_num(frame.x((t - t0) / (t1 - t0)))},{_num(frame.y(frac_y))}"

    body = _y_axis(frame, y0, step) + _time_axis(frame, t0, t1)
    for run in runs:
        upper = [xy(p["t"], p["ci_high"]) for p in run]
        lower = [xy(p["t"], p["ci_low"]) for p in reversed(run)]
        body.append(
            f'<path class="band" d="M{" L".join(upper + lower)} Z" fill="{PASS}" '
            f'fill-opacity="0.15" stroke="none"/>'
        )
        line = " L".join(xy(p["t"], p["rate"]) for p in run)
        body.append(
            f'<path class="line" d="M{line}" fill="none" stroke="{PASS}" stroke-width="1.8"/>'
        )
        body.extend(_point_marks(run, xy))
    if threshold is not None:
        body.append(_threshold_line(frame, y0, threshold))
    return _svg(width, height, "agreement over time with 95% interval", body)


def _point_marks(
    run: Sequence[Mapping[str, float]], xy: Callable[[float, float], str]
) -> list[str]:
    """Invisible hover targets with the exact numbers as tooltips."""
    marks = []
    for p in run:
        cx, cy = xy(p["t"], p["rate"]).split(",")
        tip = (
            f"{_clock(p['t'])} UTC: {pct(p['rate'])} agree "
            f"[{pct(p['ci_low'])}, {pct(p['ci_high'])}] over {int(p['pairs'])} pairs"
        )
        marks.append(
            f'<circle cx="{cx}" cy="{cy}" r="3" fill="{PASS}" fill-opacity="0.01">'
            f"<title>{_esc(tip)}</title></circle>"
        )
    return marks


def _threshold_line(frame: _Frame, y0: float, threshold: float) -> str:
    frac = (threshold - y0) / (1.0 - y0) if y0 < 1 else 1.0
    y = _num(frame.y(min(max(frac, 0.0), 1.0)))
    return (
        f'<line class="threshold" x1="{frame.left}" x2="{frame.width - frame.right}" '
        f'y1="{y}" y2="{y}" stroke="{AMBER}" stroke-dasharray="4 3" stroke-width="1.2"/>'
        f'<text x="{frame.left + 6}" y="{_num(float(y) - 4)}" fill="{AMBER}" '
        f'stroke="#ffffff" stroke-width="3" paint-order="stroke">'
        f"gate minimum {pct(threshold)}</text>"
    )


# -- confidence histograms ---------------------------------------------------------------


def _rebin(counts: Sequence[float], bins: int) -> list[float]:
    """Sum adjacent bins so that `bins` divides evenly (100 -> 50 or 20)."""
    if not counts or len(counts) % bins:
        return [float(c) for c in counts]
    step = len(counts) // bins
    return [float(sum(counts[i : i + step])) for i in range(0, len(counts), step)]


def _step_path(shares: Sequence[float], frame: _Frame, top: float) -> str:
    """Closed outline of a histogram drawn as steps (bars without gaps)."""
    n = len(shares)
    points = [f"{_num(frame.x(0))},{_num(frame.y(0))}"]
    for i, share in enumerate(shares):
        y = _num(frame.y(share / top))
        points.append(f"{_num(frame.x(i / n))},{y}")
        points.append(f"{_num(frame.x((i + 1) / n))},{y}")
    points.append(f"{_num(frame.x(1))},{_num(frame.y(0))}")
    return "M" + " L".join(points) + " Z"


def _legend(frame: _Frame, items: Sequence[tuple[str, str]]) -> list[str]:
    parts = []
    x = frame.left + 6
    for name, colour in items:
        parts.append(
            f'<rect x="{x}" y="{frame.top + 2}" width="10" height="10" fill="{colour}" '
            f'fill-opacity="0.5" stroke="{colour}"/>'
            f'<text x="{x + 14}" y="{frame.top + 11}" fill="{INK}">{_esc(name)}</text>'
        )
        x += 24 + 7 * len(name)
    return parts


def confidence_histograms(
    primary: Sequence[float],
    candidate: Sequence[float],
    bins: int = 50,
    width: int = 640,
    height: int = 180,
) -> str:
    """Both models' confidence distributions on [0, 1], overlaid as shares of their rows."""
    sides = [
        (name, _rebin(list(h), bins))
        for name, h in (("primary", primary), ("candidate", candidate))
    ]
    totals = [sum(h) for _, h in sides]
    if not any(totals):
        return empty_chart("no confidence values (outputs carry no probabilities)", width, height)
    frame = _Frame(width, height, left=40, top=24)
    shares = [[c / t for c in h] if t else [] for (_, h), t in zip(sides, totals, strict=True)]
    top = max(max(s, default=0.0) for s in shares) or 1.0
    body = [
        f'<line x1="{frame.left}" x2="{frame.width - frame.right}" y1="{_num(frame.y(0))}" '
        f'y2="{_num(frame.y(0))}" stroke="{GRID}"/>'
    ]
    for i in range(6):
        x = frame.x(i / 5)
        body.append(
            f'<text x="{_num(x)}" y="{height - 6}" text-anchor="middle" '
            f'fill="{MUTED}">{i / 5:.1f}</text>'
        )
    body.append(
        f'<text x="{frame.left - 4}" y="{frame.top + 8}" text-anchor="end" '
        f'fill="{MUTED}">{top * 100:.0f}%</text>'
    )
    for (name, _), share, colour in zip(sides, shares, (PRIMARY, CANDIDATE), strict=True):
        if share:
            body.append(
                f'<path class="hist {name}" d="{_step_path(share, frame, top)}" '
                f'fill="{colour}" fill-opacity="0.28" stroke="{colour}" stroke-width="1.2"/>'
            )
    body += _legend(
        _Frame(width, height, left=width - 190, top=2),
        [("primary", PRIMARY), ("candidate", CANDIDATE)],
    )
    return _svg(width, height, "confidence histograms, primary and candidate", body)


# -- flip matrix --------------------------------------------------------------------------


def _cell_colour(share: float, diagonal: bool) -> str:
    """Diagonal cells in green, flips in red, intensity by the share of the primary's row."""
    colour = PASS if diagonal else FAIL
    return f'fill="{colour}" fill-opacity="{_num(0.06 + 0.84 * share)}"'


def flip_heatmap(labels: Sequence[str], matrix: Sequence[Sequence[int]], cell: int = 44) -> str:
    """The flip matrix: rows the primary's class, columns the candidate's, counts inside.

    Shading is the share of the primary's row, so a rare class that flips stands out as
    much as a common one. Rows the primary never predicted (ERR, typically) are left out;
    their columns stay.
    """
    rows = [(i, label) for i, label in enumerate(labels) if sum(int(v) for v in matrix[i])]
    if not rows:
        return empty_chart("no class labels in this window", 320, 60)
    n = len(labels)
    left, top = 110, 70
    width, height = left + n * cell + 10, top + len(rows) * cell + 10
    middle = top + len(rows) * cell / 2
    body = [
        f'<text x="{left + n * cell / 2}" y="12" text-anchor="middle" fill="{MUTED}">'
        "candidate's class →</text>",
        f'<text x="12" y="{middle}" text-anchor="middle" fill="{MUTED}" '
        f'transform="rotate(-90 12 {middle})">primary\'s class →</text>',
    ]
    for j, label in enumerate(labels):
        x = left + j * cell + cell / 2
        body.append(
            f'<text x="{_num(x)}" y="{top - 6}" text-anchor="start" fill="{INK}" '
            f'transform="rotate(-40 {_num(x)} {top - 6})"><title>{_esc(label)}</title>'
            f"{_esc(_short(label))}</text>"
        )
    for k, (i, label) in enumerate(rows):
        body.append(_heat_row(k, i, label, labels, matrix[i], left, top, cell))
    return _svg(width, height, "flip matrix: primary class to candidate class", body)


def _heat_row(
    k: int,
    i: int,
    label: str,
    labels: Sequence[str],
    row: Sequence[int],
    left: int,
    top: int,
    cell: int,
) -> str:
    """Row k on screen, holding the primary's class i."""
    total = sum(int(v) for v in row)
    y = top + k * cell
    parts = [
        f'<text x="{left - 6}" y="{y + cell / 2 + 4}" text-anchor="end" fill="{INK}">'
        f"<title>{_esc(label)}</title>{_esc(_short(label))}</text>"
    ]
    for j, value in enumerate(row):
        share = int(value) / total if total else 0.0
        x = left + j * cell
        ink = "#ffffff" if share > 0.55 else INK
        tip = f"primary {label} → candidate {labels[j]}: {int(value)} ({pct(share)} of the row)"
        parts.append(
            f'<rect class="cell" x="{x}" y="{y}" width="{cell - 2}" height="{cell - 2}" '
            f"{_cell_colour(share, i == j)}><title>{_esc(tip)}</title></rect>"
            f'<text x="{x + (cell - 2) / 2}" y="{y + cell / 2 + 3}" text-anchor="middle" '
            f'fill="{ink}">{int(value)}</text>'
        )
    return "".join(parts)


# -- latency ------------------------------------------------------------------------------


def _ms(x: object) -> str:
    value = _val(x)
    if value is None:
        return "—"
    return f"{value:.0f} ms" if value >= 100 else f"{value:.1f} ms"


def latency_chart(
    primary: Mapping[str, float | None],
    candidate: Mapping[str, float | None],
    width: int = 640,
    height: int = 150,
) -> str:
    """p50 / p95 / p99 of both models as paired horizontal bars on one scale."""
    quantiles = ("p50", "p95", "p99")
    values = [v for side in (primary, candidate) for q in quantiles if _finite(v := side.get(q))]
    if not values:
        return empty_chart("no latency measured in this window", width, 60)
    top = max(values) * 1.15 or 1.0
    frame = _Frame(width, height, left=44, right=70, top=22, bottom=6)
    row_h = frame.inner_h / len(quantiles)
    bar_h = row_h * 0.36
    body = _legend(
        _Frame(width, height, left=width - 200, top=0),
        [("primary", PRIMARY), ("candidate", CANDIDATE)],
    )
    for i, q in enumerate(quantiles):
        y = frame.top + i * row_h
        body.append(
            f'<text x="{frame.left - 6}" y="{_num(y + row_h / 2 + 4)}" text-anchor="end" '
            f'fill="{INK}">{q}</text>'
        )
        for k, (side, colour) in enumerate(((primary, PRIMARY), (candidate, CANDIDATE))):
            value = side.get(q)
            w = frame.inner_w * (float(value) / top) if _finite(value) else 0.0
            by = y + 3 + k * (bar_h + 2)
            body.append(
                f'<rect class="bar" x="{frame.left}" y="{_num(by)}" width="{_num(max(w, 1.0))}" '
                f'height="{_num(bar_h)}" fill="{colour}" fill-opacity="0.8"/>'
                f'<text x="{_num(frame.left + max(w, 1.0) + 4)}" y="{_num(by + bar_h - 2)}" '
                f'fill="{INK}">{_ms(value)}</text>'
            )
    return _svg(width, height, "latency quantiles, primary and candidate", body)


# -- one interval on a shared axis (slice rows) -------------------------------------------


def interval_mark(
    value: float | None,
    low: float | None,
    high: float | None,
    reference: float | None,
    axis: tuple[float, float] = (0.0, 1.0),
    flagged: bool = False,
    width: int = 140,
    height: int = 16,
) -> str:
    """A dot with its interval whiskers beside a tick at the overall value.

    Used in slice rows so a reader sees at a glance whether the interval excludes the
    overall agreement.
    """
    lo_axis, hi_axis = axis
    span = (hi_axis - lo_axis) or 1.0

    def x(v: float) -> str:
        return _num(4 + (width - 8) * (min(max(v, lo_axis), hi_axis) - lo_axis) / span)

    colour = FAIL if flagged else INK
    v, lo, hi, ref = (_val(a) for a in (value, low, high, reference))
    parts = [f'<line x1="4" x2="{width - 4}" y1="{height / 2}" y2="{height / 2}" stroke="{GRID}"/>']
    if ref is not None:
        parts.append(
            f'<line class="ref" x1="{x(ref)}" x2="{x(ref)}" y1="1" y2="{height - 1}" '
            f'stroke="{MUTED}" stroke-dasharray="2 2"/>'
        )
    if lo is not None and hi is not None:
        parts.append(
            f'<line class="ci" x1="{x(lo)}" x2="{x(hi)}" y1="{height / 2}" y2="{height / 2}" '
            f'stroke="{colour}" stroke-width="2"/>'
        )
    if v is not None:
        parts.append(f'<circle cx="{x(v)}" cy="{height / 2}" r="3.2" fill="{colour}"/>')
    label = f"agreement {pct(value)} [{pct(low)}, {pct(high)}], overall {pct(reference)}"
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="mark" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{_esc(label)}">'
        f"<title>{_esc(label)}</title>{''.join(parts)}</svg>"
    )
