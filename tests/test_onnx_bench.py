"""The ONNX benchmark's pure parts: plan, /metrics deltas, stream lag, verdicts, the section.

No load is generated here; benchmarks/onnx_bench.py --quick exercises the rest.
"""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    """Import a harness module the way onnx_bench.py does (benchmarks/ on sys.path)."""
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    return importlib.import_module(name)


onnx_plan = _load("proxybench.onnx_plan")
onnx_report = _load("proxybench.onnx_report")
results = _load("proxybench.results")

METRICS_BEFORE = """\
# HELP shadowtrial_mirror_sampled_total Requests sampled for a candidate
# TYPE shadowtrial_mirror_sampled_total counter
shadowtrial_mirror_sampled_total{candidate="onnx"} 100.0
shadowtrial_mirror_sampled_total{candidate="other"} 999.0
# HELP shadowtrial_mirror_outcomes_total What became of each sampled mirror
# TYPE shadowtrial_mirror_outcomes_total counter
shadowtrial_mirror_outcomes_total{candidate="onnx",outcome="ok"} 95.0
shadowtrial_mirror_outcomes_total{candidate="onnx",outcome="shed"} 5.0
shadowtrial_mirror_outcomes_total{candidate="other",outcome="shed"} 500.0
"""
METRICS_AFTER = """\
# TYPE shadowtrial_mirror_sampled_total counter
shadowtrial_mirror_sampled_total{candidate="onnx"} 300.0
# TYPE shadowtrial_mirror_outcomes_total counter
shadowtrial_mirror_outcomes_total{outcome="ok",candidate="onnx"} 265.0
shadowtrial_mirror_outcomes_total{candidate="onnx",outcome="shed"} 25.0
shadowtrial_mirror_outcomes_total{candidate="onnx",outcome="timeout"} 6.0
shadowtrial_mirror_outcomes_total{candidate="onnx",outcome="error"} 4.0
"""


def test_plan_defaults_and_quick() -> None:
    full = onnx_plan.plan_from_args([])
    assert full.modes == ["off", "proxy-t1", "proxy-t2", "worker"]
    assert full.configs()[:4] == ["off-w1", "proxy-t1-w1", "proxy-t2-w1", "worker-w1"]
    assert len(full.configs()) == 8 and full.levels == (10, 25) and full.reps == 3
    # Every candidate configuration has its own worker; the no-candidate ones none.
    assert "off-w1" not in full.worker_configs() and "proxy-t2-w2" in full.worker_configs()
    assert 4 * 60 < full.estimate() < 7 * 60  # the brief: a full run in about 6 minutes
    quick = onnx_plan.plan_from_args(["--quick", "--no-proxy-workers"])
    assert quick.reps == 1 and quick.rate_duration == 2 and quick.quick and quick.write
    assert quick.worker_configs() == ["worker-w1", "worker-w2"]
    assert quick.estimate() < full.estimate() / 2


@pytest.mark.parametrize("argv", [["--levels", "10,120"], ["--reps", "0"], ["--threads", "x"]])
def test_plan_refuses_bad_flags(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        onnx_plan.plan_from_args(argv)


def test_config_names_round_trip() -> None:
    name = onnx_plan.config_name(onnx_plan.proxy_mode(2), 1)
    assert name == "proxy-t2-w1"
    assert onnx_plan.split_config(name) == ("proxy-t2", 1)
    assert onnx_plan.mode_threads("proxy-t2") == 2
    assert onnx_plan.mode_threads("worker") is None and onnx_plan.mode_threads("off") is None


def test_mirror_counters_pick_one_candidate_whatever_the_label_order() -> None:
    counts = onnx_report.mirror_counters(METRICS_AFTER, "onnx")
    assert counts == {"sampled": 300.0, "ok": 265.0, "shed": 25.0, "timeout": 6.0, "error": 4.0}
    assert onnx_report.mirror_counters(METRICS_BEFORE, "missing") == {"sampled": 0.0}


def test_mirror_shares_are_deltas_of_the_run() -> None:
    before = onnx_report.mirror_counters(METRICS_BEFORE, "onnx")
    after = onnx_report.mirror_counters(METRICS_AFTER, "onnx")
    shares = onnx_report.mirror_shares(before, after)
    assert shares["sampled"] == 200
    assert shares["shed_pct"] == pytest.approx(10.0)  # (25 - 5) of 200
    assert shares["failed_pct"] == pytest.approx(5.0)  # 6 timeouts + 4 errors of 200
    assert math.isnan(onnx_report.mirror_shares(before, before)["shed_pct"])


def test_behind_seconds_from_stream_ids() -> None:
    assert onnx_report.stream_id_ms(b"1700000000123-4") == 1700000000123
    assert onnx_report.behind_seconds(b"1700000002623-0", b"1700000000123-7") == 2.5
    assert onnx_report.behind_seconds("5-0", "5-0") == 0.0
    assert onnx_report.behind_seconds("5-0", "9-0") == 0.0  # never negative


def test_keeps_up_verdicts() -> None:
    ok = [{"behind_s": 0.2, "drain_s": 0.4}, {"behind_s": 0.0, "drain_s": 0.1}]
    assert onnx_report.keeps_up(ok, 10.0).startswith("yes: 0.1 s behind, caught up in 0.4 s")
    slow = [{"behind_s": 3.0, "drain_s": 2.0}]
    assert onnx_report.keeps_up(slow, 10.0).startswith("**no**: 3.0 s behind")
    stuck = [{"behind_s": 0.5, "drain_s": math.nan}]
    assert "1 run(s) not caught up in 10 s" in onnx_report.keeps_up(stuck, 10.0)
    assert onnx_report.keeps_up([{"p99_ms": 1.0}], 10.0) == "-"


def _row(config: str, level: int, rep: int, p99: float, **extra: float) -> dict[str, object]:
    mode, workers = onnx_plan.split_config(config)
    row: dict[str, object] = {
        "config": config,
        "mode": mode,
        "workers": workers,
        "level": level,
        "c": level,
        "rep": rep,
        "rate": 100.0,
        "p50_ms": p99 / 4,
        "p99_ms": p99,
        "p999_ms": p99 * 2,
        "lag_p99_ms": 1.0,
        "errors": 0,
        "sut_cpu": 10.0,
        "worker_cpu": 5.0,
        "stub_cpu": 1.0,
        "redis_cpu": 1.0,
        "gen_cpu": 2.0,
        "other_cpu": 3.0,
    }
    row.update(extra)
    return row


def _outcome() -> object:
    plan = onnx_plan.plan_from_args(["--workers", "1", "--threads", "1", "--levels", "10"])
    rows = []
    for rep in range(3):
        rows.append(_row("off-w1", 10, rep, 2.0 + rep))
        rows.append(_row("proxy-t1-w1", 10, rep, 4.0 + 2 * rep, shed_pct=1.0, behind_s=0.0))
        rows.append(_row("worker-w1", 10, rep, 400.0, shed_pct=0.0, behind_s=0.1, drain_s=0.2))
    out = onnx_report.OnnxOutcome(plan, {1: 1000.0}, rows)
    out.load = ("1.00, 1.00, 1.00", "2.00, 2.00, 2.00")
    return out


def test_p99_ratios_are_paired_per_repeat() -> None:
    ratios = onnx_report.p99_ratios(_outcome())
    assert ratios[("proxy-t1", 1, 10)] == pytest.approx(2.0)  # 4/2, 6/3, 8/4
    assert ratios[("worker", 1, 10)] == pytest.approx(400 / 3)


def test_cpu_per_request_adds_the_worker() -> None:
    rows = [_row("worker-w1", 10, 0, 1.0, sut_cpu=30.0, worker_cpu=20.0, rate=500.0)]
    assert onnx_report.cpu_us_per_request(rows) == pytest.approx(1000.0)  # 50% of a core / 500


def test_section_has_a_line_per_mode_and_names_the_load_and_overload() -> None:
    text = onnx_report.render(_outcome())
    table = [ln for ln in text.splitlines() if ln.startswith("| w1 ")]
    assert len(table) == 3
    assert '| w1 | run = "proxy", threads 1 | 100 (10%) | 1.50 | 6.00 | 2.00 |' in text
    assert "before the run: 1.00, 1.00, 1.00; after: 2.00, 2.00, 2.00" in text
    assert "Beyond capacity when measured (median p50 above 50 ms" in text
    assert 'w1 run = "worker" at 10%' in text  # p50 100 ms: queueing
    wrapped = results.replace_section("# R\n\nkeep me\n", text, "onnx_bench")
    assert wrapped.startswith("# R\n\nkeep me\n\n<!-- onnx_bench:start -->\n## ONNX")
    assert wrapped.endswith("<!-- onnx_bench:end -->\n")
    assert results.replace_section(wrapped, text, "onnx_bench") == wrapped
