"""The proxy benchmark harness's pure parts: parsing, medians and ratios, targets, RESULTS.md.

No load is generated here; the harness itself is exercised by `make bench` / `--quick`.
"""

from __future__ import annotations

import importlib
import math
import re
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from common.settings import settings_from_mapping

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    """Import a harness module the way run_proxy_bench.py does (benchmarks/ on sys.path)."""
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    return importlib.import_module(name)


results = _load("proxybench.results")
plan_mod = _load("proxybench.plan")
render = _load("proxybench.render")
profile = _load("proxybench.profile")
report = _load("proxybench.report")

WRK_OUTPUT = """Running 3s test @ http://127.0.0.1:40001/v1/predict
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.10ms  512.00us  14.20ms   91.00%
  Latency Distribution
     50%    2.01ms
     99%    4.80ms
  9000 requests in 3.00s, 2.10MB read
  Non-2xx or 3xx responses: 3
Requests/sec:   3000.00
Transfer/sec:    716.80KB
JSON {"requests":9000,"duration_s":3.000,"rps":3000.0,"p50_ms":2.010,"p90_ms":3.000,\
"p99_ms":4.800,"mean_ms":2.100,"err_connect":0,"err_read":1,"err_write":0,"err_status":3,\
"err_timeout":2}
"""


def test_parse_wrk_output_reads_the_json_line_and_totals_errors() -> None:
    row = results.parse_wrk_output(WRK_OUTPUT)
    assert row["rps"] == 3000.0
    assert row["p50_ms"] == 2.01 and row["p99_ms"] == 4.8
    assert row["errors"] == 6  # read 1 + status 3 + timeout 2


def test_parse_wrk_output_without_summary_names_the_output() -> None:
    with pytest.raises(results.HarnessError, match="unable to connect"):
        results.parse_wrk_output(
            "Running 3s test\nunable to connect to 127.0.0.1:1 Connection refused\n"
        )


def _row(config: str, c: int, rep: int, rps: float, p50: float = 1.0, p99: float = 2.0) -> dict:
    return {
        "config": config,
        "c": c,
        "rep": rep,
        "rps": rps,
        "p50_ms": p50,
        "p99_ms": p99,
        "errors": 0,
        "sut_cpu": 150.0,
        "stub_cpu": 20.0,
        "redis_cpu": 5.0,
        "gen_cpu": 30.0,
    }


def test_paired_ratio_is_the_median_of_per_repeat_ratios() -> None:
    rows = [
        _row("a", 32, 0, 100),
        _row("b", 32, 0, 400),  # 0.25
        _row("a", 32, 1, 300),
        _row("b", 32, 1, 1000),  # 0.30
        _row("a", 32, 2, 50),
        _row("b", 32, 2, 1000),  # 0.05
        _row("a", 128, 0, 999),
        _row("b", 128, 0, 1),  # other concurrency: ignored
    ]
    assert results.paired_ratio(rows, "a", "b", 32) == pytest.approx(0.25)
    # Differs from the ratio of medians (100 / 1000), which ignores the pairing.
    assert results.paired_ratio(rows, "a", "b", 128) == pytest.approx(999.0)


def test_paired_ratio_skips_unpaired_and_zero_denominators() -> None:
    rows = [_row("a", 32, 0, 10), _row("b", 32, 0, 0), _row("a", 32, 1, 10)]
    assert math.isnan(results.paired_ratio(rows, "a", "b", 32))


def test_paired_difference_gives_added_latency() -> None:
    rows = [
        _row("st", 1, 0, 1, p50=0.9),
        _row("direct", 1, 0, 1, p50=0.1),
        _row("st", 1, 1, 1, p50=0.6),
        _row("direct", 1, 1, 1, p50=0.2),
        _row("st", 1, 2, 1, p50=0.8),
        _row("direct", 1, 2, 1, p50=0.1),
    ]
    assert results.paired_difference(rows, "st", "direct", 1, "p50_ms") == pytest.approx(0.7)


def test_summarize_takes_medians_and_sums_errors() -> None:
    rows = [_row("a", 32, r, rps) for r, rps in enumerate([10, 30, 20])]
    rows[0]["errors"] = 2
    s = results.summarize(rows)
    assert (s["rps"], s["n"], s["errors"]) == (20, 3, 2)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert results.percentile(values, 50) == 50.0
    assert results.percentile(values, 99) == 99.0
    assert results.percentile(values, 99.9) == 100.0
    assert math.isnan(results.percentile([], 50))


@pytest.mark.parametrize(
    ("value", "verdict"),
    [(0.31, "PASS (stretch)"), (0.27, "PASS"), (0.2, "MISS"), (math.nan, "n/a")],
)
def test_target_verdicts(value: float, verdict: str) -> None:
    t = results.Target("ratio", value, 0.25, at_least=True, stretch=0.30)
    assert t.verdict == verdict
    assert results.Target("ms", 0.8, 1.0, at_least=False, unit=" ms").verdict == "PASS"
    assert results.Target("ms", 1.2, 1.0, at_least=False, unit=" ms").verdict == "MISS"


def test_slow_candidate_noise_uses_spread_with_a_floor() -> None:
    assert results.slow_candidate_noise([10, 14, 12], [9, 10], 0.1) == pytest.approx(4.0)
    assert results.slow_candidate_noise([30.0], [29.0], 0.1) == pytest.approx(3.0)
    assert results.slow_candidate_noise([5.0], [4.0], 0.1) == pytest.approx(1.0)  # 1 ms floor


def test_interleaved_runs_every_config_once_per_round_rotating_the_order() -> None:
    order = results.interleaved(["a", "b", "c"], (32, 128), 2)
    assert len(order) == 12
    assert [n for r, c, n in order if (r, c) == (0, 32)] == ["a", "b", "c"]
    assert [n for r, c, n in order if (r, c) == (1, 128)] == ["b", "c", "a"]


# -- RESULTS.md section ------------------------------------------------------------------------

START, END = results.START_MARKER, results.END_MARKER


def test_replace_section_keeps_everything_outside_the_markers() -> None:
    before = (
        f"# Benchmark results\n\nintro\n\n{START}\nold table\n{END}\n\n## worker section\nkeep me\n"
    )
    after = results.replace_section(before, "new table")
    expected = before.replace("old table", "new table")
    assert after == expected and "## worker section\nkeep me\n" in after
    assert results.replace_section(after, "new table") == after  # idempotent


def test_replace_section_appends_when_markers_are_absent_and_creates_a_file() -> None:
    assert results.replace_section("# Results\n\nother\n", "t").endswith(
        f"other\n\n{START}\nt\n{END}\n"
    )
    assert results.replace_section(None, "t") == f"# Benchmark results\n\n{START}\nt\n{END}\n"


def test_replace_section_refuses_an_unclosed_section() -> None:
    with pytest.raises(results.HarnessError, match="no"):
        results.replace_section(f"x\n{START}\nhalf", "t")


# -- plan, templates, profile ------------------------------------------------------------------


def test_quick_plan_is_one_short_repeat_at_c32_and_full_fits_the_budget() -> None:
    quick = plan_mod.plan_from_args(["--quick"])
    assert (quick.reps, quick.duration, quick.conns) == (1, 3, (32,))
    full = plan_mod.plan_from_args([])
    assert (full.reps, full.duration, full.conns, full.workers) == (5, 10, (32, 128), (2, 1))
    assert full.estimate() < 15 * 60
    assert quick.estimate() < 2 * 60


def test_fill_replaces_placeholders_and_rejects_unknown_ones() -> None:
    assert render.fill("listen @PORT@; $request_uri", {"PORT": 8080}) == "listen 8080; $request_uri"
    with pytest.raises(results.HarnessError, match="@MISSING@"):
        render.fill("@MISSING@", {})


def test_every_template_renders_with_the_values_the_harness_supplies() -> None:
    values = {
        k: "1"
        for k in (
            "PRIMARY_PORT",
            "CANDIDATE_PORT",
            "MIRROR_PORT",
            "PRIMARY_BODY",
            "CANDIDATE_BODY",
            "USER_DIRECTIVE",
            "RUN_DIR",
            "LOG_DIR",
        )
    }
    for name in ("nginx_stub", "nginx_mirror"):
        text = render.fill((render.CONF_DIR / f"{name}.conf.in").read_text(), values)
        assert not re.search(r"@[A-Z][A-Z0-9_]*@", text)
    assert "mirror /__mirror;" in text
    cand = {"CANDIDATE_NAME": "cand", "CANDIDATE_PORT": 2, "CANDIDATE_TIMEOUT_MS": 2000}
    toml = render.shadowtrial_config(
        {
            "LISTEN_PORT": 1,
            "ADMIN_PORT": 3,
            "PRIMARY_PORT": 4,
            "MIRROR_CONCURRENCY": 256,
            "REDIS_URL": "redis://127.0.0.1:6379/0",
            "REDIS_PREFIX": "benchx",
            "MAX_PAIRS": 10,
        },
        cand,
    )
    parsed = settings_from_mapping(tomllib.loads(toml), environ={})
    assert parsed.proxy.listen == "127.0.0.1:1" and parsed.redis.prefix == "benchx"
    assert [(c.name, c.url, c.sample) for c in parsed.candidates] == [
        ("cand", "http://127.0.0.1:2", 1.0)
    ]


def test_nginx_literal_escapes_quotes_and_backslashes() -> None:
    assert render.nginx_literal(b'{"a":"it\'s \\\\ ok"}\n') == '{"a":"it\\\'s \\\\\\\\ ok"}'


def test_profile_aggregates_self_and_inclusive_time_by_package() -> None:
    lines = [
        'process 7:"python serve";run (uvicorn/server.py:10);forward (proxy/forward.py:5);'
        "request (aiohttp/client.py:9) 6",
        "run (uvicorn/server.py:10);forward (proxy/forward.py:7) 3",
        "run (uvicorn/server.py:10);dumps (json/__init__.py:231) 1",
        "garbage line",
    ]
    p = profile.parse_collapsed(lines)
    assert p.samples == 10
    assert p.self_by_package == {"aiohttp": 6, "proxy": 3, "json": 1}
    assert p.inclusive_by_package["uvicorn"] == 10 and p.inclusive_by_package["proxy"] == 9
    assert p.self_by_function.most_common(1)[0] == ("request (aiohttp/client.py)", 6)
    assert profile.package_of("/x/lib/python3.11/site-packages/redis/client.py") == "redis"
    assert p.inclusive_by_project_function == {"forward (proxy/forward.py)": 9}


def test_targets_judge_a_synthetic_run() -> None:
    plan = plan_mod.plan_from_args(["--quick", "--workers", "2"])
    full, off, mirror = plan_mod.full(2), plan_mod.off(2), plan_mod.NGINX_MIRROR
    rows = [
        {**_row(mirror, 32, 0, 10000), "phase": "throughput"},
        {**_row(full, 32, 0, 6200), "phase": "throughput"},
        {**_row(off, 32, 0, 9000), "phase": "throughput"},
        {**_row(plan_mod.DIRECT, 1, 0, 1, p50=0.10), "phase": "latency"},
        {**_row(full, 1, 0, 1, p50=0.70), "phase": "latency"},
    ]
    rate_rows = [
        {**_row(off, 0, 0, 0, p99=10.0), "phase": "rate"},
        {**_row(full, 0, 0, 0, p99=11.0), "phase": "rate"},
        {**_row(plan_mod.slow(2), 0, 0, 0, p99=14.0), "phase": "rate"},
    ]
    out = report.Outcome(plan, rows, rate_rows, 1400.0, {"cores": "2"})
    verdicts = {t.name: t.verdict for t in report.targets(out)}
    assert verdicts["full shadowing ÷ nginx-mirror req/s, c=32"] == "PASS"  # 0.62 >= 0.6
    assert not any("÷ shadowtrial-off" in name for name in verdicts)  # no longer a target
    assert verdicts["added p50 at c=1 over direct (full shadowing)"] == "PASS"  # 0.6 ms
    assert verdicts["fixed rate: primary p99 change by the mirror"] == "PASS"  # 10 %
    # 3 ms moved, allowed max(spread 0, 10% of 11 ms, 1 ms) = 1.1 ms
    assert verdicts["fixed rate: primary p99 change by a slow candidate (vs mirror on)"] == "MISS"
    rows[1] = {**_row(full, 32, 0, 5900), "phase": "throughput"}  # 0.59: short of issue 14's
    verdicts = {t.name: t.verdict for t in report.targets(out)}
    assert verdicts["full shadowing ÷ nginx-mirror req/s, c=32"] == "MISS"


def test_profile_drops_process_frames_whose_command_line_holds_semicolons() -> None:
    line = (
        'process 1:"python -m shadowtrial serve";process 2:"python -c from x import y; y()";'
        "<module> (<string>:1);handle (proxy/forward.py:3) 4"
    )
    p = profile.parse_collapsed([line])
    assert p.self_by_package == {"proxy": 4}
    assert set(p.inclusive_by_package) == {"<string>", "proxy"}
    table = "\n".join(profile.render(p))
    assert "| proxy | 100.0 | 100.0 |" in table and "<string>" not in table


def test_render_writes_every_table_of_a_synthetic_run() -> None:
    plan = plan_mod.plan_from_args(["--quick", "--workers", "2"])
    rows = [
        {**_row(name, 32, 0, rps), "phase": "throughput", "other_cpu": 40.0}
        for name, rps in zip(plan.throughput_configs(), [40000, 10000, 5000, 2800], strict=True)
    ]
    rows += [{**_row(name, 1, 0, 100), "phase": "latency"} for name in plan.latency_configs()]
    rate_rows = [
        {**_row(config, 0, 0, 0), "mode": mode, "phase": "rate", "p999_ms": 9.0, "lag_p99_ms": 0.5}
        for mode, config in plan.rate_modes()
    ]
    out = report.Outcome(plan, rows, rate_rows, 1400.0, {"cores": "2", "commit": "abc"})
    text = report.render(out, report.targets(out))
    assert text.startswith("## Proxy throughput and latency")
    assert "QUICK SMOKE RUN" in text and "commit abc" in text
    assert "| shadowtrial-full-w2 | 2,800 | 0.28 | 0.56 |" in text
    assert "#### Fixed rate 1,400 req/s" in text
    assert "**The machine was not quiet**" in text
    assert "capture did not happen" in text  # no pair stream counted


def test_metrics_excerpt_keeps_nonzero_mirror_counters_only() -> None:
    text = "\n".join(
        [
            "# HELP shadowtrial_mirror_outcomes_total Mirror outcomes",
            'shadowtrial_mirror_outcomes_total{candidate="slow",outcome="shed"} 3806.0',
            'shadowtrial_mirror_outcomes_created{candidate="slow",outcome="ok"} 1.79e+09',
            'shadowtrial_mirror_outcomes_total{candidate="slow",outcome="timeout"} 0.0',
            'shadowtrial_requests_total{method="POST",status_class="2xx"} 10.0',
        ]
    )
    picked = [line for line in text.splitlines() if report._interesting(line)]
    assert picked == ['shadowtrial_mirror_outcomes_total{candidate="slow",outcome="shed"} 3806.0']


openloop = _load("proxybench.openloop")


def test_openloop_frames_answers_by_content_length_or_chunks() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 199"
    assert openloop.response_length(head) == (200, 199)
    chunked = b"HTTP/1.1 502 Bad Gateway\r\nTransfer-Encoding: chunked"
    assert openloop.response_length(chunked) == (502, -1)
    assert openloop.response_length(b"HTTP/1.1 204 No Content\r\nX-A: b") == (204, 0)
    assert openloop.chunked_complete(b"5\r\nhello\r\n0\r\n\r\n")
    assert not openloop.chunked_complete(b"5\r\nhello\r\n")


def test_openloop_summary_counts_errors_and_reports_lateness() -> None:
    tally = openloop.Tally(latencies=[0.001, 0.002, 0.010], lags=[0.0, 0.0, 0.006], non_2xx=1)
    tally.failed = 2
    s = openloop.summary(tally, rate=100.0, duration=1.0)
    assert (s["ok"], s["errors"]) == (2, 3)
    assert s["p50_ms"] == pytest.approx(2.0) and s["lag_p99_ms"] == pytest.approx(6.0)


def test_rate_targets_are_void_when_the_generator_fell_behind() -> None:
    full, off, slow = plan_mod.full(2), plan_mod.off(2), plan_mod.slow(2)
    rows = [
        {**_row(name, 0, 0, 0, p99=p99), "lag_p99_ms": 40.0}
        for name, p99 in ((off, 10.0), (full, 11.0), (slow, 11.0))
    ]
    verdicts = [t.verdict for t in report.rate_targets(rows, 2)]
    assert verdicts == ["n/a (load generator late by 40 ms)"] * 2
    for row in rows:
        row["lag_p99_ms"] = 1.0
    assert [t.verdict for t in report.rate_targets(rows, 2)] == ["PASS", "PASS"]


def test_the_dispatcher_configurations_only_with_the_flag() -> None:
    """`--dispatcher` adds run = "dispatcher" instances (fast and slow candidate); off by
    default, so the default run measures what it always did."""
    plain = plan_mod.plan_from_args(["--quick", "--workers", "2"])
    both = plan_mod.plan_from_args(["--quick", "--workers", "2", "--dispatcher"])
    assert not any("dispatch" in c for c in plain.all_configs())
    added = set(both.all_configs()) - set(plain.all_configs())
    assert added == {plan_mod.dispatched(2), plan_mod.slow_dispatched(2)}
    kinds = {name: kind for name, _, kind in both.shadowtrial_instances()}
    assert kinds[plan_mod.dispatched(2)] == "fast-dispatch"
    assert kinds[plan_mod.slow_dispatched(2)] == "slow-dispatch"
    assert both.estimate() > plain.estimate()


def test_dispatcher_mode_rate_targets_judge_the_dispatched_configurations() -> None:
    """With --dispatcher the fixed-rate targets are judged a second time on the dispatched
    instances: here the proxy-mode mirror moves p99 by 50% (MISS), the dispatched one by 10%."""
    rows = [
        {**_row(name, 0, 0, 0, p99=p99), "lag_p99_ms": 1.0}
        for name, p99 in (
            (plan_mod.off(2), 10.0), (plan_mod.full(2), 15.0), (plan_mod.slow(2), 15.0),
            (plan_mod.dispatched(2), 11.0), (plan_mod.slow_dispatched(2), 11.2),
        )
    ]  # fmt: skip
    proxy_mode = report.rate_targets(rows, 2)
    dispatched = report.rate_targets(rows, 2, dispatched=True)
    assert [t.verdict for t in proxy_mode] == ["MISS", "PASS"]
    assert [t.verdict for t in dispatched] == ["PASS", "PASS"]
    assert dispatched[0].value == pytest.approx(10.0)
    assert "dispatcher mode" in dispatched[0].name and "dispatcher" not in proxy_mode[0].name
