"""The report as terminal tables (rich): what `shadowtrial report NAME` prints.

Same numbers and formatting as the web page (analysis.ui.present), laid out for a
terminal: the gate's verdict and reasons first, then agreement, slices, confidence,
latency, errors and labels. Text from traffic (slice values, class labels) goes into
`rich.text.Text` cells, never through markup, so `[red]` in a slice value prints as is,
and through common.sanitize.printable, so `ESC[2J` or a bidi override prints as an escape
instead of clearing the screen or reordering a line. Every column of a line is followed
by at least one space: a value as wide as its column never glues to the next.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from analysis.ui.present import interval, ms, num, pct, peq, pts, pval, ratio, signed
from common.sanitize import printable

STYLE = {"pass": "bold green", "fail": "bold red", "insufficient": "bold yellow", "skip": "dim"}
OUTCOME_WIDTH = max(len(outcome) for outcome in STYLE)
SLICES_SHOWN = 12


def _get(report: Mapping[str, Any], *path: str) -> Any:
    value: Any = report
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", header_style="dim")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    return table


def _text(value: object, style: str = "") -> Text:
    """Text from anywhere (traffic included) as one printable line, never markup."""
    return Text(printable(value), style=style)


def _add(table: Table, *cells: str | Text) -> None:
    """A row whose plain strings are printable text, never markup."""
    table.add_row(*(c if isinstance(c, Text) else _text(c) for c in cells))


def _bracket(fmt: Callable[[object], str], value: object, low: object, high: object) -> str:
    """'value [low, high]' in one format."""
    return f"{fmt(value)} [{fmt(low)}, {fmt(high)}]"


def header(report: Mapping[str, Any]) -> Text:
    """Which candidate, which window, how much evidence."""
    window = report.get("window") or {}
    text = Text()
    text.append(printable(report.get("candidate")), style="bold")
    text.append(printable(f"  {window.get('start')} to {window.get('end')}"), style="dim")
    text.append(
        f"\n{num(report.get('pairs'))} pairs ({num(report.get('rows'))} rows)"
        f", sampled {num(report.get('sampled'))}, shed {num(report.get('shed'))}"
    )
    return text


def gate(report: Mapping[str, Any]) -> Group:
    """The verdict, coloured, and one line per rule."""
    verdict = printable(_get(report, "gate", "verdict") or "insufficient")
    lines = [Text.assemble("gate: ", (verdict.upper(), STYLE.get(verdict, "bold")))]
    rules = _get(report, "gate", "rules") or []
    for rule in rules:
        outcome = printable(rule.get("outcome"))
        lines.append(
            Text.assemble(
                "  ",
                (f"{outcome:<{OUTCOME_WIDTH}} ", STYLE.get(outcome, "")),
                (printable(rule.get("rule")), "bold"),
                " ",
                printable(rule.get("detail")),
                (_end_only(rule), "dim"),
            )
        )
    if not rules:
        lines += [_text(f"  {reason}") for reason in _get(report, "gate", "reasons") or []]
    note = _get(report, "gate", "anytime_note")
    if note:
        lines.append(Text(f"  {note}", style="dim"))
    return Group(*lines)


def _end_only(rule: Mapping[str, Any]) -> str:
    """Marks a rule that is judged once, at the end of the trial, not at any look."""
    if rule.get("anytime") is False and rule.get("outcome") != "skip":
        return " (judged at the end of the trial)"
    return ""


def agreement(report: Mapping[str, Any]) -> Table:
    ag = report.get("agreement") or {}
    table = _table("Agreement", "", "value", "95% interval")
    _add(
        table, "agreement", pct(ag.get("rate"), 2), interval(ag.get("ci_low"), ag.get("ci_high"), 2)
    )
    _add(table, "anytime-valid (CS)", "", interval(ag.get("cs_low"), ag.get("cs_high"), 2))
    kappa = ag.get("kappa")
    _add(table, "Cohen's kappa", "—" if kappa is None else f"{kappa:.3f}", "")
    _add(table, "rows that differ", f"{num(ag.get('disagree'))} of {num(ag.get('n'))}", "")
    noise = report.get("noise_floor") or {}
    if noise.get("agreement") is not None:
        _add(
            table,
            _text(f"noise floor ({noise.get('candidate')})"),
            pct(noise.get("agreement"), 2),
            interval(noise.get("ci_low"), noise.get("ci_high"), 2),
        )
    return table


def _slice_cells(row: Mapping[str, Any]) -> list[Text]:
    style = "red" if row.get("flagged") else ("dim" if row.get("p_adj") is None else "")
    p_text = pval(row.get("p_adj")) if row.get("p_adj") is not None else "n < 32"
    cells = [
        str(row.get("slice")), str(row.get("value")), num(row.get("pairs")),
        pct(row.get("agreement")), interval(row.get("ci_low"), row.get("ci_high")),
        pts(row.get("delta_vs_overall")), p_text, "FLAGGED" if row.get("flagged") else "",
    ]  # fmt: skip
    return [_text(cell, style) for cell in cells]


def slices(report: Mapping[str, Any], shown: int = SLICES_SHOWN) -> Table | None:
    """Flagged slices first (red, with adjusted p-values), then the most divergent."""
    from analysis.ui.present import slice_rows

    rows = slice_rows(report, str(report.get("candidate")))
    if not rows:
        return None
    title = f"Slices (flagged first, then by divergence; {min(shown, len(rows))} of {len(rows)})"
    table = _table(
        title, "slice", "value", "pairs", "agreement", "95% interval", "Δ", "p (adj.)", ""
    )
    for row in rows[:shown]:
        _add(table, *_slice_cells(row))
    return table


def skew(report: Mapping[str, Any]) -> Table | None:
    """Whether disagreement concentrates on inputs training never saw (a training profile)."""
    from analysis.ui.present import skew_view

    view = skew_view(report)
    if view is None:
        return None
    table = _table(
        "Against the training profile: " + view["text"],
        "request", "pairs", "agreement", "95% interval", "Δ", "p (adj.)", "",
    )  # fmt: skip
    for row in view["parts"]:
        _add(table, *_slice_cells(row)[1:])
    return table


def discovered(report: Mapping[str, Any]) -> Table | None:
    rows = report.get("discovered") or []
    if not rows:
        return None
    table = _table(
        "Discovered slices (SliceLine; a hint unless confirmed by e-BH over every slice scored)",
        "conditions", "pairs", "agreement", "p (adj.)", "status",
    )  # fmt: skip
    for row in rows:
        conditions = " and ".join(f"{f}={v}" for f, v in row.get("conditions") or [])
        _add(
            table,
            _text(conditions),
            num(row.get("pairs")),
            pct(row.get("agreement")),
            pval(row.get("p_adj")),
            Text(
                str(row.get("status") or "hint"),
                "red" if row.get("status") == "confirmed" else "dim",
            ),
        )
    return table


def confidence(report: Mapping[str, Any]) -> Table:
    conf = report.get("confidence") or {}
    deltas = report.get("confidence_deltas") or {}
    near = conf.get("near_boundary") or {}
    table = _table("Confidence", "", "primary", "candidate", "test")
    _add(
        table,
        "mean confidence",
        pct(_get(conf, "primary", "mean")),
        pct(_get(conf, "candidate", "mean")),
        "",
    )
    _add(
        table,
        "paired shift (candidate minus primary)",
        "",
        _bracket(signed, deltas.get("mean"), deltas.get("ci_low"), deltas.get("ci_high")),
        f"sign test {peq(deltas.get('sign_p'))}",
    )
    _add(
        table,
        "near the boundary (margin < 0.1)",
        pct(near.get("primary")),
        pct(near.get("candidate")),
        f"McNemar {peq(near.get('p'))}",
    )
    return table


def latency(report: Mapping[str, Any]) -> Table:
    from analysis.ui.present import latency_rows

    table = _table("Latency", "", "primary", "candidate", "ratio")
    for row in latency_rows(report):
        _add(table, row["q"], ms(row["primary"]), ms(row["candidate"]), ratio(row["ratio"]))
    if _get(report, "latency", "comparable") is False:
        table.caption = "the candidate runs in the worker: latencies are not comparable"
    return table


def errors(report: Mapping[str, Any]) -> Table:
    err = report.get("errors") or {}
    table = _table("Errors", "", "count", "rate")
    _add(table, "primary", num(err.get("primary")), pct(err.get("primary_rate"), 2))
    _add(table, "candidate", num(err.get("candidate")), pct(err.get("candidate_rate"), 2))
    for kind, count in (err.get("by_kind") or {}).items():
        _add(table, _text(f"  {kind}"), num(count), "")
    return table


def labels(report: Mapping[str, Any]) -> Table | None:
    lab = report.get("labels") or {}
    if not lab.get("n"):
        return None
    table = _table(f"Ground truth ({num(lab.get('n'))} labelled pairs)", "", "value")
    _add(table, "accuracy, primary", pct(lab.get("primary_accuracy")))
    _add(table, "accuracy, candidate", pct(lab.get("candidate_accuracy")))
    _add(
        table,
        "change",
        _bracket(pts, lab.get("delta"), lab.get("delta_ci_low"), lab.get("delta_ci_high")),
    )
    _add(
        table,
        "wrong where the primary was right / the reverse",
        f"{num(lab.get('negative_flips'))} / {num(lab.get('positive_flips'))}",
    )
    _add(table, "McNemar p", pval(lab.get("mcnemar_p")))
    return table


MAX_CLASS_ROWS = 10  # predicted classes shown per model in the estimate (most rows first)


def estimated(report: Mapping[str, Any]) -> Table | None:
    """Accuracy expected from confidences before labels, and whether to trust it."""
    est = report.get("estimated") or {}
    primary, candidate = est.get("primary") or {}, est.get("candidate") or {}
    if primary.get("accuracy") is None and candidate.get("accuracy") is None:
        return None
    trusted = "trusted" if est.get("trusted") else "not trusted"
    table = _table(f"Estimated accuracy, before labels ({trusted}: {est.get('reason')})", "",
                   "value")  # fmt: skip
    for name, side in (("primary", primary), ("candidate", candidate)):
        fmt = _bracket(pct, side.get("accuracy"), side.get("ci_low"), side.get("ci_high"))
        _add(table, f"expected accuracy, {name}", fmt)
    _add(table, "expected change", pts(est.get("delta")))
    for row in (est.get("by_class") or [])[:MAX_CLASS_ROWS]:
        p, c = row.get("primary") or {}, row.get("candidate") or {}
        _add(table, f"predicted {row.get('class')}: expected accuracy, primary / candidate",
             f"{_bracket(pct, p.get('accuracy'), p.get('ci_low'), p.get('ci_high'))} / "
             f"{_bracket(pct, c.get('accuracy'), c.get('ci_low'), c.get('ci_high'))}")  # fmt: skip
    cal = est.get("calibration") or {}
    _add(table, "calibration error (ECE), primary / candidate",
         f"{pts(cal.get('primary_ece'))} / {pts(cal.get('candidate_ece'))}")  # fmt: skip
    rep = est.get("representative") or {}
    if rep.get("representative") is False:
        _add(table, "labelled requests unlike the rest (agreement)",
             f"{pct(rep.get('labelled_agreement'))} vs {pct(rep.get('agreement'))}")  # fmt: skip
    return table


def stratified(report: Mapping[str, Any]) -> Table | None:
    """The agreement weighted back over the strata, and what it is worth."""
    st = report.get("stratified")
    if not st:
        return None
    table = _table(f"Stratified by {printable(st.get('slice'))}", "", "value")
    _add(table, "agreement, weighted",
         _bracket(pct, st.get("agreement"), st.get("ci_low"), st.get("ci_high")))  # fmt: skip
    _add(table, "agreement, as sampled", pct(st.get("unweighted_agreement")))
    _add(table, "effective pairs", num(round(st.get("effective_pairs") or 0)))
    for row in st.get("strata") or []:
        value = "rest" if row.get("value") is None else row.get("value")
        _add(table, _text(f"  {value}: {num(row.get('pairs'))} pairs at"
                          f" {pct(row.get('inclusion'))}"), pct(row.get("agreement")))  # fmt: skip
    return table


def render_report(report: Mapping[str, Any], console: Console) -> None:
    """Print every section that has something to say."""
    console.print(header(report))
    console.print(gate(report))
    sections = [
        agreement(report), slices(report), skew(report), discovered(report), confidence(report),
        latency(report), errors(report), labels(report), estimated(report),
        stratified(report),
    ]  # fmt: skip
    for section in sections:
        if section is not None:
            console.print()
            console.print(section)
