"""The watch page's SVG charts: a feature's reference against now, and the timeline.

Pure functions from the live watch document's pieces (analysis.watch_live) to SVG text,
drawn like analysis.ui.charts (no script, readable with scripts off, testable as a
string). The document is read as hostile: a share that is not a finite number in [0, 1]
is drawn as 0, a bin list of the wrong length is cut to what fits, and every label
(category values come from traffic) goes through the shared escape.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from analysis.ui.charts import (
    FAIL,
    GRID,
    INK,
    MUTED,
    PRIMARY,
    _esc,
    _Frame,
    _legend,
    _num,
    _short,
    _svg,
    _val,
    empty_chart,
)

REFERENCE = "#8c959f"  # the reference: grey, behind; now: the primary's blue
MAX_CATEGORIES_DRAWN = 12  # the most frequent values (either side); the rest are in the table
FEATURE_W, FEATURE_H = 300, 130


def _share(x: object) -> float:
    """A share from the document as a float in [0, 1] (anything else: 0)."""
    value = _val(x)
    return min(max(value, 0.0), 1.0) if value is not None else 0.0


def _shares(values: object, n: int) -> list[float]:
    items = list(values) if isinstance(values, list | tuple) else []
    return [_share(v) for v in items[:n]] + [0.0] * max(0, n - len(items))


def feature_chart(chart: object, label: str = "") -> str:
    """A numeric histogram or a category bar chart, reference beside now."""
    if not isinstance(chart, Mapping):
        return empty_chart("no distribution to draw", FEATURE_W, 40)
    if chart.get("kind") == "categorical":
        return _categories(chart.get("values"), label)
    return _histogram(chart.get("edges"), chart.get("now"), chart.get("reference"), label)


def _edge_text(x: float) -> str:
    return f"{x:.3g}"


def _histogram(edges: object, now: object, reference: object, label: str) -> str:
    cut = [
        e for e in (_val(x) for x in (edges if isinstance(edges, list) else [])) if e is not None
    ]
    bins = len(cut) - 1
    if bins < 1:
        return empty_chart("no numeric values", FEATURE_W, 40)
    cur, ref = _shares(now, bins), _shares(reference, bins)
    top = max([*cur, *ref, 0.01])
    frame = _Frame(FEATURE_W, FEATURE_H, left=44, bottom=30, top=18)
    slot = frame.inner_w / bins
    parts = [_axis_line(frame)]
    for i in range(bins):
        x = frame.left + i * slot
        for j, (share, colour) in enumerate(((ref[i], REFERENCE), (cur[i], PRIMARY))):
            h = share / top * frame.inner_h
            parts.append(
                f'<rect x="{_num(x + 1 + j * (slot - 2) / 2)}" y="{_num(frame.y(0) - h)}" '
                f'width="{_num(max((slot - 2) / 2, 0.5))}" height="{_num(h)}" fill="{colour}">'
                f"<title>{_esc(f'[{_edge_text(cut[i])}, {_edge_text(cut[i + 1])})')}: "
                f"reference {share_text(ref[i])}, now {share_text(cur[i])}</title></rect>"
            )
    for i in (0, bins):
        anchor = "start" if i == 0 else "end"
        parts.append(
            f'<text x="{_num(frame.left + i * slot)}" y="{frame.height - 14}" '
            f'text-anchor="{anchor}" fill="{MUTED}">{_esc(_edge_text(cut[i]))}</text>'
        )
    parts += _top_label(frame, top)
    parts += _legend(
        _Frame(FEATURE_W, FEATURE_H, left=44, top=0), [("reference", REFERENCE), ("now", PRIMARY)]
    )
    return _svg(FEATURE_W, FEATURE_H, f"{label}: reference against now", parts)


def share_text(x: float) -> str:
    return f"{100 * x:.1f}%"


def _axis_line(frame: _Frame) -> str:
    y = _num(frame.y(0))
    right = frame.width - frame.right
    return f'<line x1="{frame.left}" x2="{right}" y1="{y}" y2="{y}" stroke="{GRID}"/>'


def _top_label(frame: _Frame, top: float) -> list[str]:
    return [
        f'<text x="{frame.left - 4}" y="{frame.top + 4}" text-anchor="end" '
        f'fill="{MUTED}">{_esc(share_text(top))}</text>'
    ]


def _categories(values: object, label: str) -> str:
    rows = [v for v in (values if isinstance(values, list) else []) if isinstance(v, Mapping)]
    rows = sorted(rows, key=lambda v: -max(_share(v.get("now")), _share(v.get("reference"))))
    rows = rows[:MAX_CATEGORIES_DRAWN]
    if not rows:
        return empty_chart("no category values", FEATURE_W, 40)
    bar, gap, left = 6, 4, 96
    height = 22 + len(rows) * (2 * bar + gap)
    top = max([0.01, *(max(_share(v.get("now")), _share(v.get("reference"))) for v in rows)])
    width = FEATURE_W - left - 50
    parts = []
    for i, row in enumerate(rows):
        y = 4 + i * (2 * bar + gap)
        text = str(row.get("value"))
        ref, cur = _share(row.get("reference")), _share(row.get("now"))
        colour = FAIL if ref == 0 and cur > 0 else PRIMARY  # never seen in the reference
        parts.append(
            f'<text x="{left - 4}" y="{y + bar + 3}" text-anchor="end" fill="{INK}">'
            f"<title>{_esc(text)}</title>{_esc(_short(text))}</text>"
        )
        for j, (share, fill) in enumerate(((ref, REFERENCE), (cur, colour))):
            parts.append(
                f'<rect x="{left}" y="{y + j * bar}" width="{_num(share / top * width)}" '
                f'height="{bar - 1}" fill="{fill}"/>'
            )
        parts.append(
            f'<text x="{_num(left + cur / top * width + 3)}" y="{y + 2 * bar - 1}" '
            f'fill="{MUTED}">{_esc(share_text(cur))}</text>'
        )
    legend_y = height - 6
    parts.append(
        f'<text x="{left}" y="{legend_y}" fill="{MUTED}">grey: reference · blue: now · '
        f'<tspan fill="{FAIL}">red: new</tspan></text>'
    )
    return _svg(FEATURE_W, height, f"{label}: reference against now", parts)


# -- timeline --------------------------------------------------------------------------------


def _epoch(text: object) -> float | None:
    """An ISO time of the document as epoch seconds (None when it is not one)."""
    if not isinstance(text, str) or len(text) > 64:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()  # naive: UTC


def timeline_points(timeline: object) -> list[dict[str, float | None]]:
    """The timeline's buckets with a readable start, in time order."""
    out = []
    for row in timeline if isinstance(timeline, list) else []:
        if not isinstance(row, Mapping) or (t := _epoch(row.get("start"))) is None:
            continue
        flagged = _val(row.get("flagged"))
        out.append(
            {
                "t": t,
                "drift": _val(row.get("max_drift")),
                "flagged": flagged or 0.0,
                "confidence": _val(row.get("mean_confidence")),
            }
        )
    return sorted(out, key=lambda p: p["t"] or 0.0)


def timeline_chart(timeline: object, threshold: float = 0.1) -> str:
    """Two panels over the window: the largest feature drift per bucket (red dots where a
    feature was flagged; dashed: the smallest distance that can flag) and the primary's
    mean confidence."""
    points = timeline_points(timeline)
    if len(points) < 1:
        return empty_chart("no watched requests in this window yet")
    t0, t1 = points[0]["t"] or 0.0, points[-1]["t"] or 0.0
    span = max(t1 - t0, 1.0)
    drifts = [p["drift"] for p in points if p["drift"] is not None]
    top = max([threshold * 2, *drifts]) * 1.1
    upper = _Frame(640, 120, top=14, bottom=6)
    lower = _Frame(640, 110, top=14, bottom=24)
    drift = _panel(upper, points, "drift", top, (t0, span), threshold)
    confidence = _panel(lower, points, "confidence", 1.0, (t0, span), None)
    parts = [
        f"<g>{''.join(drift)}</g>",
        f'<g transform="translate(0,120)">{"".join(confidence)}</g>',
    ]
    parts += _clock_ticks(lower, t0, t1, 120)
    return _svg(640, 230, "drift and confidence over the window", parts)


def _panel(
    frame: _Frame,
    points: Sequence[Mapping[str, float | None]],
    key: str,
    top: float,
    span: tuple[float, float],
    threshold: float | None,
) -> list[str]:
    title = "largest feature drift" if key == "drift" else "primary mean confidence"
    tick = f'<text x="{frame.left - 4}" text-anchor="end" fill="{MUTED}"'
    parts = [
        f'<text x="{frame.left}" y="{frame.top - 3}" fill="{INK}">{title}</text>',
        _axis_line(frame),
        f'{tick} y="{frame.top + 8}">{_num(top)}</text>',
        f'{tick} y="{_num(frame.y(0))}">0</text>',
    ]
    if threshold is not None:
        y = _num(frame.y(threshold / top))
        parts.append(
            f'<line x1="{frame.left}" x2="{frame.width - frame.right}" y1="{y}" y2="{y}" '
            f'stroke="{FAIL}" stroke-dasharray="4 3">'
            f"<title>flag threshold {threshold:g}</title></line>"
        )
    run: list[str] = []
    for p in points:
        value = p[key]
        if value is None:  # a bucket with nothing to show breaks the line
            parts += _polyline(run)
            run = []
            continue
        x = frame.x(((p["t"] or 0.0) - span[0]) / span[1])
        y = frame.y(min(max(value / top, 0.0), 1.0))
        run.append(f"{_num(x)},{_num(y)}")
        if key == "drift" and (p["flagged"] or 0) > 0:
            parts.append(
                f'<circle cx="{_num(x)}" cy="{_num(y)}" r="3" fill="{FAIL}">'
                f"<title>{int(p['flagged'] or 0)} feature(s) flagged</title></circle>"
            )
    return parts + _polyline(run)


def _polyline(run: list[str]) -> list[str]:
    if not run:
        return []
    if len(run) == 1:
        x, y = run[0].split(",")
        return [f'<circle cx="{x}" cy="{y}" r="2" fill="{PRIMARY}"/>']
    return [
        f'<polyline points="{" ".join(run)}" fill="none" stroke="{PRIMARY}" stroke-width="1.5"/>'
    ]


def _clock_ticks(frame: _Frame, t0: float, t1: float, offset: int) -> list[str]:
    y = offset + frame.height - 8
    out = []
    for frac, anchor in ((0.0, "start"), (1.0, "end")):
        ts = t0 + frac * (t1 - t0)
        out.append(
            f'<text x="{_num(frame.x(frac))}" y="{y}" text-anchor="{anchor}" fill="{MUTED}">'
            f"{time.strftime('%H:%M', time.gmtime(ts))} UTC</text>"
        )
    return out
