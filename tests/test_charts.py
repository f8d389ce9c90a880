"""SVG charts, the agreement series and the page's number formatting: pure functions.

Every chart must be well-formed XML (a browser drops a malformed inline SVG silently),
draw what the numbers say (positions checked), and escape any text from traffic.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from urllib.parse import parse_qs, urlsplit

import pytest

from analysis import stats
from analysis.series import agreement_points
from analysis.ui import charts, present

SVG = "{http://www.w3.org/2000/svg}"
XSS = "<script>alert(1)</script>"


def _parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # raises on malformed XML
    assert root.tag == f"{SVG}svg"
    return root


def _coords(d: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in re.findall(r"(-?[\d.]+),(-?[\d.]+)", d)]


def _point(t: int, rate: float, pairs: int = 100) -> dict:
    low, high = stats.wilson_interval(round(rate * pairs), pairs)
    return {"t": t, "pairs": pairs, "rate": rate, "ci_low": low, "ci_high": high}


# -- agreement over time --------------------------------------------------------------------


def test_agreement_chart_draws_line_inside_band_and_higher_rates_higher() -> None:
    points = [_point(1_700_000_000 + 60 * i, rate) for i, rate in enumerate([0.95, 0.99, 0.9])]
    root = _parse(charts.agreement_chart(points, threshold=0.92))
    line = root.find(f".//{SVG}path[@class='line']")
    band = root.find(f".//{SVG}path[@class='band']")
    assert line is not None and band is not None
    ys = [y for _, y in _coords(line.get("d", ""))]
    assert len(ys) == 3
    assert ys[1] < ys[0] < ys[2]  # SVG y grows downwards: 0.99 is drawn highest
    band_pts = _coords(band.get("d", ""))
    upper, lower = band_pts[:3], band_pts[3:][::-1]
    for (_, y), (_, hi), (_, lo) in zip(_coords(line.get("d", "")), upper, lower, strict=True):
        assert hi <= y <= lo
    threshold = root.find(f".//{SVG}line[@class='threshold']")
    assert threshold is not None
    assert ys[1] < float(threshold.get("y1", "0")) < ys[2]  # 0.92 between 0.99 and 0.90


def test_agreement_chart_breaks_the_line_where_a_bucket_has_no_pairs() -> None:
    points = [_point(60 * i, 0.97) for i in range(3)]
    points.insert(2, {"t": 150, "pairs": 0, "rate": None, "ci_low": 0.0, "ci_high": 1.0})
    root = _parse(charts.agreement_chart(points))
    assert len(root.findall(f".//{SVG}path[@class='line']")) == 2


def test_agreement_chart_without_data_says_so() -> None:
    svg = charts.agreement_chart([])
    _parse(svg)
    assert "no pairs in this window yet" in svg


def test_agreement_axis_keeps_a_sparse_bucket_from_squashing_the_chart() -> None:
    points = [_point(60 * i, 0.97, 500) for i in range(20)] + [_point(1200, 1.0, 2)]
    root = _parse(charts.agreement_chart(points))
    labels = [t.text for t in root.iter(f"{SVG}text") if t.text and t.text.endswith("%")]
    lowest = min(float(label.rstrip("%")) for label in labels)
    assert 90 <= lowest < 97  # the 2-pair bucket's interval reaches ~34%; the axis does not


# -- confidence histograms ------------------------------------------------------------------


def test_histograms_overlay_shares_with_the_tallest_bin_at_the_top() -> None:
    primary = [0] * 100
    candidate = [0] * 100
    primary[50] = 10  # all of the primary's mass in one bin
    candidate[90], candidate[91] = 30, 30  # the candidate's split over two 100-bins = one 50-bin
    root = _parse(charts.confidence_histograms(primary, candidate))
    paths = {p.get("class"): _coords(p.get("d", "")) for p in root.iter(f"{SVG}path")}
    assert set(paths) == {"hist primary", "hist candidate"}
    tops = {name: min(y for _, y in pts) for name, pts in paths.items()}
    assert tops["hist primary"] == pytest.approx(tops["hist candidate"])  # both 100% shares
    peak_x = [x for x, y in paths["hist candidate"] if y == tops["hist candidate"]]
    assert min(peak_x) > max(x for x, y in paths["hist primary"] if y == tops["hist primary"])


def test_histograms_without_confidences_say_so() -> None:
    assert "no confidence values" in charts.confidence_histograms([0] * 100, [0] * 100)


# -- flip matrix ----------------------------------------------------------------------------


def test_flip_heatmap_escapes_labels_and_shades_by_row_share() -> None:
    labels = ["cat", XSS, "ERR"]
    matrix = [[90, 10, 0], [5, 5, 0], [0, 0, 0]]
    svg = charts.flip_heatmap(labels, matrix)
    root = _parse(svg)
    assert "<script" not in svg and "&lt;script&gt;" in svg
    cells = root.findall(f".//{SVG}rect[@class='cell']")
    assert len(cells) == 2 * 3  # the empty ERR row is left out, its column stays
    opacity = [float(c.get("fill-opacity", "0")) for c in cells]
    assert opacity[0] > opacity[1]  # 90% of the row vs 10%
    assert cells[0].get("fill") == charts.PASS and cells[1].get("fill") == charts.FAIL
    assert opacity[3] == pytest.approx(opacity[4])  # 5 and 5: equal shares of a small row


def test_flip_heatmap_without_labels() -> None:
    assert "no class labels" in charts.flip_heatmap([], [])


# -- latency and interval marks ----------------------------------------------------------


def test_latency_bars_are_proportional() -> None:
    svg = charts.latency_chart(
        {"p50": 10.0, "p95": 20.0, "p99": 40.0}, {"p50": 5.0, "p95": 20.0, "p99": 80.0}
    )
    bars = [float(r.get("width", "0")) for r in _parse(svg).findall(f".//{SVG}rect[@class='bar']")]
    assert len(bars) == 6  # per quantile: primary, candidate
    assert bars[1] == pytest.approx(bars[0] / 2, abs=0.01)  # coordinates have two decimals
    assert bars[5] == pytest.approx(2 * bars[4], abs=0.01)
    assert "80.0 ms" in svg


def test_latency_without_measurements() -> None:
    assert "no latency" in charts.latency_chart({"p50": None}, {})


def test_interval_mark_puts_the_reference_outside_a_flagged_interval() -> None:
    svg = charts.interval_mark(0.8, 0.75, 0.84, 0.95, (0.7, 1.0), flagged=True)
    root = _parse(svg)
    ci = root.find(f".//{SVG}line[@class='ci']")
    ref = root.find(f".//{SVG}line[@class='ref']")
    assert ci is not None and ref is not None and ci.get("stroke") == charts.FAIL
    assert float(ref.get("x1", "0")) > float(ci.get("x2", "0"))


# -- the agreement series ------------------------------------------------------------------


def test_agreement_points_merge_buckets_by_adding_counts() -> None:
    timeline = [{"t": 60 * i, "rows": 10, "agreement": 0.9} for i in range(200)]
    points = agreement_points(timeline, 60, max_points=48)
    assert len(points) == 40  # 200 buckets in spans of ceil(200 / 48) = 5
    assert all(p["pairs"] == 50 and p["agree"] == 45 for p in points)
    low, high = stats.wilson_interval(45, 50)
    assert points[0]["ci_low"] == pytest.approx(low) and points[0]["ci_high"] == pytest.approx(high)
    assert [p["t"] for p in points[:2]] == [0, 300]


def test_agreement_points_skip_empty_spans_and_keep_exact_counts() -> None:
    timeline = [
        {"t": 0, "rows": 3, "agreement": 2 / 3},
        {"t": 60, "rows": 0, "agreement": None},
        {"t": 120, "rows": 7, "agreement": 1.0},
    ]
    points = agreement_points(timeline, 60)
    assert [(p["t"], p["pairs"], p["agree"]) for p in points] == [(0, 3, 2), (120, 7, 7)]
    assert agreement_points([], 60) == []


# -- formatting and links -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, "—"), (float("nan"), "—"), (0.00001, "< 0.001"), (0.0042, "0.0042"), (0.05, "0.05"),
     (0.1234, "0.123"), (1.0, "1")],
)  # fmt: skip
def test_pval(value: float | None, text: str) -> None:
    assert present.pval(value) == text


def test_number_formats() -> None:
    assert present.pct(0.97314) == "97.3%"
    assert present.pts(-0.0234) == "\u22122.3 pts" and present.pts(0.01) == "+1.0 pts"
    assert present.num(12345) == "12,345" and present.ms(3.21) == "3.2 ms"
    assert present.ms(250.4) == "250 ms" and present.ratio(1.234) == "1.23\u00d7"
    assert present.interval(0.9, 0.95) == "[90.0%, 95.0%]" and present.interval(None, 1) == ""
    assert present.peq(0.0001) == "p < 0.001" and present.peq(0.2) == "p = 0.2"


def test_drilldown_link_round_trips_any_slice_value() -> None:
    url = present.drilldown_url("", "v2", "country", XSS + "&x=1")
    parts = urlsplit(url)
    assert parts.path == "/v1/candidates/v2/pairs"
    assert parse_qs(parts.query) == {"divergent": ["true"], "slice": [f"country={XSS}&x=1"]}
    assert "<" not in url


def test_slices_are_sorted_flagged_first_then_by_divergence() -> None:
    report = {
        "agreement": {"rate": 0.95},
        "slices": [
            {"slice": "c", "value": "tiny", "pairs": 3, "agreement": 0.0, "delta_vs_overall": -0.95,
             "p_adj": None, "flagged": False},
            {"slice": "c", "value": "FR", "pairs": 900, "agreement": 0.97,
             "delta_vs_overall": 0.02, "p_adj": 0.3, "flagged": False},
            {"slice": "c", "value": "DE", "pairs": 500, "agreement": 0.93,
             "delta_vs_overall": -0.02, "p_adj": 0.2, "flagged": False},
            {"slice": "c", "value": "BR", "pairs": 300, "agreement": 0.8,
             "delta_vs_overall": -0.15, "p_adj": 1e-9, "flagged": True},
        ],
    }  # fmt: skip
    rows = present.slice_rows(report, "v2")
    assert [r["value"] for r in rows] == ["BR", "DE", "FR", "tiny"]
    assert rows[0]["flagged"] and not rows[-1]["testable"]
