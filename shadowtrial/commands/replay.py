"""`shadowtrial replay`: judge a new model on recorded traffic before it sees live traffic.

    shadowtrial replay requests.jsonl --candidate v3 [--url URL] [--rate 50] [-c CONFIG]
    shadowtrial replay --from-stream v2 --candidate v3 [--limit 10000] [-c CONFIG]

Every recorded request is sent to the NEW candidate, and its answer is paired with the
recorded primary answer as a common.records.PairRecord on NEW's stream: the same workers
and report judge it (`shadowtrial report v3`, the web page). Pairs carry the time of the
replay, so the report's usual windows ("last hour") show them.

JSONL format: one JSON object per line (blank lines and lines starting with # are skipped).
    body                  required. A JSON value is sent as JSON; a string is sent as it
                          is (UTF-8 text: encode a JSON string body as "\\"text\\"").
    path                  default "/"; may carry a query string ("/predict?v=2").
    method                default "POST".
    headers               object of request headers to send (hop-by-hop ones dropped;
                          content-type defaults to application/json for a JSON body).
                          The pair keeps the config's capture_headers, redact_headers
                          redacted, as the proxy would.
    request_id            default "replay-<line number>".
    primary_body          the primary's recorded answer: JSON value or string, as body.
    primary_status        default 200.
    primary_ms            the primary's latency in milliseconds (default: not measured).
    primary_content_type  default application/json for a JSON value.
A line without primary_body is also sent to `--primary URL` when given, else skipped and
counted.

`--from-stream NAME` reads the pair records kept in candidate NAME's stream instead: the
request bodies, methods, paths, captured headers (redacted ones are not sent) and the
primary's recorded answers.

Where NEW is: `--url`, else its `[[candidates]]` entry, else its registry entry in Redis.
An ONNX candidate of the config (`onnx = ...`, no URL) is not called: its pairs are
written `deferred`, and a worker with the same config runs the model (as `run = "worker"`).

Rate: a token bucket of `--rate` requests per second (0: unlimited), `--concurrency` in
flight. Exit codes: 0 done, 1 nothing could be recorded, 2 usage errors (bad file or
line, no URL for the candidate, Redis unreachable).

`--check` makes the file a regression suite (a failure catalog from `shadowtrial export`):
every answer is also judged against the line's primary_body, the expected answer, as the
report would judge it; the cases NEW still fails are listed and the exit code is 1 if
any fails. Lines may carry `body_base64` / `primary_body_base64` instead of `body` /
`primary_body` (binary bodies, as export writes them).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from proxy.replay import (
    Replay,
    ReplayError,
    Tally,
    Target,
    TokenBucket,
    check_jsonl,
    jsonl_items,
    stream_items,
)
from shadowtrial.commands import add_config_option, load_config, positive_int

EXIT_OK, EXIT_NOTHING, EXIT_USAGE = 0, 1, 2


# -- the command ------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add the `replay` subcommand."""
    parser = subparsers.add_parser(
        "replay",
        help="send recorded requests to a new candidate and record the pairs for the report",
        description="Replay a JSONL file of requests (or the requests kept in a candidate's"
        " stream) against a new candidate; its answers are paired with the recorded primary"
        " answers and judged by the same workers, report and gate.",
        epilog='JSONL lines: {"body": ..., "path": "/v2/models/m/infer", "method":'
        ' "POST", "headers": {...}, "request_id": ..., "primary_body": ...,'
        ' "primary_status": 200, "primary_ms": 12.5}; only body is required.'
        " See `python -m pydoc shadowtrial.commands.replay` for the details.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "file", nargs="?", type=Path, metavar="FILE.jsonl", help="recorded requests"
    )
    source.add_argument("--from-stream", metavar="NAME", help="replay candidate NAME's stream")
    parser.add_argument("--candidate", required=True, metavar="NEW", help="the candidate to judge")
    parser.add_argument("--url", help="NEW's base URL (default: from the config or the registry)")
    parser.add_argument(
        "--primary", metavar="URL", help="ask this primary when a line has no answer"
    )
    parser.add_argument("--rate", type=float, default=50.0, metavar="R",
                        help="requests per second (default 50; 0 for no limit)")  # fmt: skip
    parser.add_argument("--concurrency", type=positive_int, default=8, metavar="N",
                        help="requests in flight (default 8)")  # fmt: skip
    parser.add_argument("--limit", type=positive_int, default=None, metavar="N",
                        help="replay at most N requests")  # fmt: skip
    parser.add_argument(
        "--timeout-ms",
        type=positive_int,
        default=None,
        metavar="MS",
        help="per request (default: the candidate's timeout_ms or 2000)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="a regression suite: judge every answer against the line's primary_body (the"
        " expected answer, as `shadowtrial export` writes it), list the cases NEW still"
        " fails, exit 1 if any",
    )
    add_config_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Validate the input, replay it with a progress bar, print what happened."""
    settings = load_config(args)
    try:
        if args.rate < 0:
            raise ReplayError(f"--rate must be 0 (no limit) or positive, got {args.rate:g}")
        if args.from_stream == args.candidate:
            raise ReplayError("--from-stream and --candidate name the same stream")
        total = check_jsonl(args.file, args.limit) if args.file is not None else None
        on_pair, checked = _checker(args, settings)
        tally = asyncio.run(_replay(args, settings, total, on_pair))
    except ReplayError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _summary(tally, args.candidate)
    if checked is not None:
        return _check_summary(checked, args.candidate)
    return EXIT_OK if tally.written else EXIT_NOTHING


def _checker(args: argparse.Namespace, settings: Any) -> tuple[Any, Any]:
    """(callback, tally) judging each pair against its expected answer, with --check."""
    if not args.check:
        return None, None
    from analysis.catalog import checker

    return checker(settings, args.candidate)


def _check_summary(checked: Any, name: str) -> int:
    """Which cases NEW still fails (exit 1 if any; 0 when it passes them all)."""
    from rich.console import Console
    from rich.text import Text

    from common.sanitize import printable

    console = Console(highlight=False)
    failing = checked.failing
    console.print(Text(f"check: {name} passes {checked.cases - len(failing)} of {checked.cases}"
                       f" cases; {checked.disagreeing} of {checked.rows} rows differ from the"
                       " expected answer"))  # fmt: skip
    for request_id in failing[:20]:
        console.print(Text(f"  still fails: {printable(request_id)}"))
    if len(failing) > 20:
        console.print(Text(f"  ... and {len(failing) - 20} more"))
    return EXIT_NOTHING if failing or not checked.cases else EXIT_OK


def redis_url(settings: Any) -> str:
    """The configured Redis, else the embedded one a running `serve` or `worker` owns."""
    from common.store import default_socket_dir

    if settings.redis.url:
        return settings.redis.url
    socket = default_socket_dir() / "redis.sock"
    if not socket.exists():
        raise ReplayError(
            "no [redis] url is configured and no embedded Redis is running: start"
            " `shadowtrial serve` or `shadowtrial worker` with this config first, or set REDIS_URL"
        )
    return f"unix://{socket}"


async def resolve_target(args: argparse.Namespace, settings: Any, client: Any, keys: Any) -> Target:
    """Where NEW answers: --url, the config, or the registry (see the module docstring)."""
    name = args.candidate
    cand = settings.candidate(name)
    timeout_ms = args.timeout_ms or (cand.timeout_ms if cand else None)
    if args.url:
        return Target(name, args.url, (timeout_ms or 2000) / 1000.0)
    if cand is not None:
        return Target(name, cand.url, (timeout_ms or 2000) / 1000.0)  # url None: ONNX, deferred
    raw = await client.hget(keys.registry(), name)
    entry = orjson.loads(raw) if raw else {}
    if entry.get("url"):
        return Target(name, entry["url"], (timeout_ms or entry.get("timeout_ms") or 2000) / 1000.0)
    raise ReplayError(
        f"no URL for candidate {name!r}: pass --url, add it under [[candidates]], or register it"
        " (POST /v1/candidates)"
    )


async def _replay(
    args: argparse.Namespace, settings: Any, total: int | None, on_pair: Any = None
) -> Tally:
    import httpx

    from common.keys import Keys
    from common.redis_client import STORE_FAILURES, async_client
    from proxy.capture import HeaderCapture, StreamBudget
    from proxy.redact import BodyRedactor

    keys = Keys(settings.redis.prefix)
    client = async_client(redis_url(settings), socket_connect_timeout=2.0)
    try:
        target = await resolve_target(args, settings, client, keys)
        if args.from_stream:
            total = min(await client.xlen(keys.pairs(args.from_stream)), args.limit or sys.maxsize)
            if not total:
                raise ReplayError(f"the stream of {args.from_stream!r} holds no pairs")
            items = stream_items(client, keys.pairs(args.from_stream), args.limit)
        else:
            items = jsonl_items(args.file, args.limit)
        capture = HeaderCapture.from_settings(settings)
        redactor = BodyRedactor.from_settings(settings)
        limits = httpx.Limits(max_connections=args.concurrency * 2)
        async with httpx.AsyncClient(limits=limits) as http:
            with _progress(total, target.name) as advance:
                replay = Replay(
                    target, client, keys.pairs(target.name), http, TokenBucket(args.rate),
                    lambda h: capture.select(h.items()), args.primary, settings.redis.max_pairs,
                    advance, redactor.record if redactor else None,
                    maxlen=StreamBudget(settings.redis.max_pairs,
                                        settings.redis.max_stream_bytes).maxlen,
                    on_pair=on_pair,
                )  # fmt: skip
                return await replay.run(items, args.concurrency)
    except STORE_FAILURES as exc:
        raise ReplayError(f"Redis: {exc}") from None
    finally:
        await client.aclose()


class _progress:
    """A rich progress bar with the rate and outcome counts; yields the per-request callback."""

    def __init__(self, total: int | None, name: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.counts: dict[str, int] = {}
        self.started = time.monotonic()
        self.done = 0
        self.bar = Progress(
            TextColumn("replay to {task.fields[name]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[counts]}"),
        )  # fmt: skip
        self.task = self.bar.add_task("replay", total=total, name=name, rate="", counts="")

    def __enter__(self) -> Callable[[str], None]:
        self.bar.start()
        return self.advance

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def advance(self, outcome: str) -> None:
        self.done += 1
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        elapsed = max(time.monotonic() - self.started, 1e-6)
        text = " ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        self.bar.update(self.task, advance=1, rate=f"{self.done / elapsed:.1f}/s", counts=text)


def _summary(tally: Tally, name: str) -> None:
    from rich.console import Console
    from rich.text import Text

    console = Console(highlight=False)
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(tally.outcomes.items())) or "none"
    console.print(Text(f"replayed {tally.total} requests to {name}: {outcomes}"))
    if tally.skipped:
        console.print(
            Text(f"skipped {tally.skipped} without a recorded primary answer (see --primary)")
        )
    console.print(Text(f"wrote {tally.written} pair records; a worker turns them into the report:"
                       f" shadowtrial report {name}"))  # fmt: skip
