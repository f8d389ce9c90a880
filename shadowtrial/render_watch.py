"""The watch document as a terminal table: what `shadowtrial watch` prints.

Feature names and category values come from traffic, so every cell goes through
`rich.text.Text` (never markup) and common.sanitize.printable (no escape sequences),
as in shadowtrial/render.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from analysis.ui.present import interval, ms, num, pct, pval
from common.sanitize import printable

FEATURES_SHOWN = 40


def _drift(value: object) -> str:
    return "—" if not isinstance(value, int | float) else f"{value:.3f}"


def _row(feature: Mapping[str, Any]) -> list[Text]:
    flagged = bool(feature.get("flagged"))
    cells = [
        printable(feature.get("feature")), str(feature.get("kind"))[:3], num(feature.get("count")),
        _drift(feature.get("drift")), pval(feature.get("p_adj")),
        "DRIFT" if flagged else ("new" if feature.get("new") else ""),
        pct(feature.get("unseen_rate")), pct(feature.get("out_of_range_rate")),
        pct(feature.get("missing_rate")),
        pct(feature.get("reference_missing_rate", feature.get("missing_rate_reference"))),
    ]  # fmt: skip
    return [Text(c, style="bold red" if flagged else "") for c in cells]


def render_watch(document: Mapping[str, Any]) -> Group:
    """A one-line summary and one row per feature (flagged first)."""
    features = list(document.get("features") or [])
    flagged = document.get("flagged") or []
    summary = Text(
        f"{num(document.get('requests'))} requests, {num(document.get('rows'))} rows against "
        f"the {printable(document.get('reference'))}: {len(flagged)} of {len(features)} "
        f"features flagged; {num(document.get('unreadable'))} unreadable, "
        f"{num(document.get('features_over_cap'))} values beyond the feature cap"
    )
    table = Table(title="features", title_justify="left", header_style="dim", box=None)
    table.add_column("feature", no_wrap=True, max_width=32)
    for column in ("kind", "n", "drift", "p adj", "flag", "unseen", "out", "miss", "ref miss"):
        table.add_column(column, justify="left" if column == "kind" else "right", no_wrap=True)
    for feature in features[:FEATURES_SHOWN]:
        table.add_row(*_row(feature))
    more = len(features) - FEATURES_SHOWN
    legend = Text(
        "drift: Wasserstein in reference SDs (num) or Jensen-Shannon (cat); unseen:"
        " categories training never saw; out: numbers outside its range",
        style="dim",
    )
    extra = [Text(f"... {more} more")] if more > 0 else []
    extra += [_unseen(f) for f in features[:FEATURES_SHOWN] if f.get("unseen_values")]
    return Group(summary, table, legend, *extra, *_outputs(document.get("outputs") or {}))


def _unseen(feature: Mapping[str, Any]) -> Text:
    """`city: never seen in the reference: marseille (212), ...` (values printable)."""
    values = ", ".join(
        f"{printable(v.get('value'))} ({num(v.get('count'))})" for v in feature["unseen_values"]
    )
    return Text(f"{printable(feature.get('feature'))}: never seen in the reference: {values}")


def _outputs(outputs: Mapping[str, Any]) -> list[Text]:
    """The primary's answers in one line, when the lines recorded them."""
    if not outputs:
        return []
    flagged = ", ".join(printable(f) for f in outputs.get("flagged") or []) or "nothing"
    return [Text(
        f"primary: mean confidence {pct(outputs.get('mean_confidence'))} (reference "
        f"{pct(outputs.get('reference_mean_confidence'))}), error rate "
        f"{pct(outputs.get('error_rate'))} (reference {pct(outputs.get('reference_error_rate'))}),"
        f" {num(outputs.get('unreadable'))} answers unreadable; drift flagged in: {flagged}",
        style="bold red" if outputs.get("flagged") else "",
    )]  # fmt: skip


# -- the live document (GET /v1/watch) ----------------------------------------------------


def _reference_line(ref: Mapping[str, Any]) -> str:
    kind = printable(ref.get("kind"))
    span = f" {printable(ref.get('from'))} to {printable(ref.get('to'))}" if ref.get("from") else ""
    if not ref.get("available"):
        return f"reference {kind}{span}: not available ({printable(ref.get('problem'))})"
    return f"reference {kind}{span} ({num(ref.get('requests'))} requests)"


def render_live(document: Mapping[str, Any]) -> Group:
    """The live watch: window and reference, the feature table, what was first seen, the
    primary's outputs, labelled accuracy and the accounting (every string printable)."""
    window = document.get("window") or {}
    ref = document.get("reference") or {}
    features = list(document.get("features") or [])
    flagged = document.get("flagged") or []
    head = Text(
        f"window {printable(window.get('from'))} to {printable(window.get('to'))}: "
        f"{num(document.get('requests'))} watched requests, {num(document.get('rows'))} rows; "
        f"{_reference_line(ref)}\n{len(flagged)} of {len(features)} features flagged; "
        f"{num(document.get('unreadable'))} unreadable, "
        f"{num(document.get('features_over_cap'))} values beyond the feature cap"
    )
    table = render_watch({**document, "reference": ref.get("kind")}).renderables[1]
    seen = [_first_seen(f) for f in features[:FEATURES_SHOWN] if f.get("first_seen")]
    return Group(head, table, *seen, _live_outputs(document.get("outputs") or {}),
                 _live_labels(document.get("labels") or {}),
                 _accounting(document.get("accounting") or {}))  # fmt: skip


def _first_seen(feature: Mapping[str, Any]) -> Text:
    values = ", ".join(printable(v) for v in feature.get("first_seen") or [])
    return Text(f"{printable(feature.get('feature'))}: not in the reference: {values}")


def _live_outputs(out: Mapping[str, Any]) -> Text:
    mix = ", ".join(
        f"{printable(k)} {pct(v)}" for k, v in list((out.get("class_mix") or {}).items())[:6]
    )
    flagged = bool(out.get("confidence_flagged"))
    return Text(
        f"primary ({printable(out.get('kind'))}): mean confidence "
        f"{pct(out.get('mean_confidence'))} (reference {pct(out.get('mean_confidence_reference'))})"
        f"{', DRIFTED' if flagged else ''}; classes {mix or '—'}; errors "
        f"{num(out.get('errors'))} ({pct(out.get('error_rate'))}); latency p50 "
        f"{ms(out.get('latency_p50_ms'))}, p99 {ms(out.get('latency_p99_ms'))}",
        style="bold red" if flagged else "",
    )


def _live_labels(labels: Mapping[str, Any]) -> Text:
    if not labels.get("labelled"):
        return Text("labels: none joined to watched answers in the window", style="dim")
    return Text(
        f"labels: {num(labels.get('labelled'))} labelled, accuracy {pct(labels.get('accuracy'))}"
        f" {interval(labels.get('low'), labels.get('high'))}"
    )


def _accounting(acc: Mapping[str, Any]) -> Text:
    return Text(
        f"accounting: {num(acc.get('captured'))} sampled by the proxies, "
        f"{num(acc.get('folded'))} folded, {num(acc.get('dropped'))} dropped",
        style="dim",
    )
