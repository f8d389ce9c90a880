"""What the demo prints: one line per step, then the report (shadowtrial.render's tables).

The report part is the same rendering `shadowtrial report` uses, limited to what tells
the story: the verdict and its reasons, agreement with its interval and the noise floor,
the slices (the flagged one first, with its adjusted p-value), the confidence shift,
latency and the ground-truth accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from shadowtrial.demo import config
from shadowtrial.demo.models import SKEWED_ANSWER

SLICES_SHOWN = 6
VERDICT_STYLE = {"pass": "bold green", "fail": "bold red", "insufficient": "bold yellow"}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def trained_line(built: Mapping[str, Any], rows: int, candidate: str, seconds: float) -> str:
    """Which models were trained, and how accurate they are on held-out rows."""
    v1, v2 = built["v1"], built["v2"]
    return (
        f"trained on Fair's affairs survey ({rows:,} rows shipped with statsmodels) in"
        f" {seconds:.1f} s; held-out accuracy: v1 (primary, logistic regression)"
        f" {_pct(v1.accuracy)}, v2 ({candidate} candidate, gradient-boosted trees)"
        f" {_pct(v2.accuracy)}"
    )


def started_line(ports: config.Ports, seconds: float) -> str:
    """Every process and its port."""
    return (
        f"started in {seconds:.1f} s: primary v1 :{ports.primary}, replica {config.REPLICA}"
        f" :{ports.replica} (noise floor), candidate {config.CANDIDATE} :{ports.candidate}"
        f" (HTTP), {config.ONNX_CANDIDATE} (the same model as ONNX, run inside the proxy by"
        f" onnxruntime), proxy :{ports.proxy} (admin :{ports.admin}), 2 workers"
    )


def traffic_line(result: Any) -> str:
    """How the traffic went."""
    line = (
        f"sent {result.sent:,} requests in {result.seconds:.1f} s ({result.rate:.0f}/s),"
        f" {result.ok:,} answered; {result.labels:,} ground-truth labels posted to /v1/feedback"
    )
    if result.failed:
        line += f"; {result.failed:,} failed (first: {result.first_error})"
    return line


def compared_line(recorded: int, seconds: float, per_request: int = 3) -> str:
    return (
        f"the workers had compared all {recorded:,} pairs ({per_request} per request)"
        f" {seconds:.1f} s after the last request"
    )


def verdict_text(report: Mapping[str, Any]) -> Text:
    verdict = str((report.get("gate") or {}).get("verdict") or "insufficient")
    return Text(verdict.upper(), style=VERDICT_STYLE.get(verdict, "bold"))


def print_report(
    console: Console, reports: Mapping[str, Mapping[str, Any]], candidate: str
) -> None:
    """The candidate's report as tables, then one line for its ONNX twin."""
    from shadowtrial import render

    report = reports[config.CANDIDATE]
    console.print()
    console.rule(f"the report of {config.CANDIDATE}: is it safe to promote?")
    console.print(render.header(report))
    console.print(render.gate(report))
    sections = [
        render.agreement(report),
        render.slices(report, shown=SLICES_SHOWN),
        render.confidence(report),
        render.latency(report),
        render.labels(report),
    ]
    for section in sections:
        if section is not None:
            console.print()
            console.print(section)
    twin = reports[config.ONNX_CANDIDATE]
    console.print()
    console.print(
        Text.assemble(
            f"{config.ONNX_CANDIDATE} (the same model run by onnxruntime inside the proxy): gate ",
            verdict_text(twin),
            f", agreement {_pct((twin.get('agreement') or {}).get('rate'))},"
            f" p99 {_ms((twin.get('latency') or {}).get('candidate', {}).get('p99'))}"
            f" against {_ms((report.get('latency') or {}).get('candidate', {}).get('p99'))}"
            " over HTTP",
        )
    )
    console.print()
    console.print(_story(candidate, report))


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f} ms"


def _story(candidate: str, report: Mapping[str, Any]) -> Panel:
    """What was planted, said once the evidence is on screen."""
    live, exported = SKEWED_ANSWER
    if candidate == "flawed":
        text = (
            f"What went wrong: v2 was trained on the new feature store's export, which spells"
            f' the survey answer religious = "{live}" as "{exported}". Live requests still'
            f' send "{live}". v2\'s encoder has never seen it and quietly turns it into -1,'
            ' which its trees read as more religious than "strongly": a sixth of the'
            " traffic is scored as if devout. Nothing errors, overall agreement and accuracy"
            " look fine; only the slice shows it, and the gate refuses the promotion."
            "\nRun `shadowtrial demo --candidate good` to see v2 trained on the right export."
        )
        return Panel(text, title="training/serving skew", border_style="red")
    text = (
        "This v2 was trained on the right export: it changes some answers (mostly where v1,"
        ' trained to favour recall, said "affair" too readily), is more accurate on the'
        " labelled requests, no slice is worse beyond the policy, and the gate lets it be"
        " promoted. Run `shadowtrial demo` (the flawed candidate) for the silent failure."
    )
    return Panel(text, title="a candidate that passes", border_style="green")


def print_next_steps(
    console: Console,
    admin_url: str,
    proxy_url: str,
    token: str,
    token_env: str,
    folder: Path,
    options: Any,
) -> None:
    """Where to look next, and how it ends."""
    console.print(
        f"web page:    {admin_url}/ui/candidates/{config.CANDIDATE}   (overview: {admin_url}/ui/)"
    )
    console.print(
        f"admin token: {token}   (the demo set {token_env} to it;"
        " the page asks for it to promote or reject)"
    )
    console.print(f"report JSON: {admin_url}/v1/candidates/{config.CANDIDATE}/report")
    console.print(f"the proxy:   POST {proxy_url}{config.infer_path()}")
    console.print(f"config:      {folder / 'shadowtrial.toml'}")
    if options.no_wait:
        console.print("--no-wait: stopping now")
    elif options.duration is not None:
        console.print(f"serving for {options.duration:g} s (Ctrl-C stops sooner)")
    else:
        console.print("serving until Ctrl-C")
