"""A realistic trial for the web page and CLI tests: real pair records through the worker.

The candidate is better overall (faster, a bit more confident, right more often than the
primary where they disagree, per ground-truth labels) but regresses on one slice,
country=BR, which the report flags. `hostile=True` adds a country whose value is an HTML
script tag, to check that pages show it as text.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aredis
from starlette.applications import Starlette

from analysis.feedback import record_feedback
from analysis.ui import ui_routes
from analysis.worker import Worker
from common.keys import Keys
from common.records import OUTCOME_TIMEOUT
from common.settings import Settings, settings_from_mapping
from tests import pairs_factory as pf

XSS = "<script>alert(1)</script>"
CLASSES = pf.CLASSES
# country -> (share of traffic, candidate disagreement rate)
COUNTRIES = {"FR": (0.30, 0.045), "DE": (0.25, 0.05), "US": (0.20, 0.04), "JP": (0.15, 0.045),
             "BR": (0.10, 0.20)}  # fmt: skip


@dataclass
class Trial:
    """What was seeded: settings, candidate name, pairs written, the window's end."""

    settings: Settings
    name: str
    pairs: int
    now: float


def trial_settings(
    prefix: str, names: Sequence[str] = ("v2",), **sections: dict[str, Any]
) -> Settings:
    """Settings with HTTP candidates `names` and a per-row `country` slice.

    `sections` are extra config tables (`gate={...}` is merged over the trial's gate).
    """
    raw: dict[str, Any] = {
        "redis": {"prefix": prefix},
        "worker": {"block_ms": 10},
        "candidates": [
            {"name": n, "url": f"http://127.0.0.1:{9 + i}"} for i, n in enumerate(names)
        ],
        "slices": [{"name": "country", "from": "$.inputs[1].data[*]"}],
        **sections,
    }
    raw["gate"] = {"min_pairs": 500, "min_agreement": 0.9, **sections.get("gate", {})}
    return settings_from_mapping(raw, environ={})


def _answer(rng: random.Random, label: int, low: float, high: float) -> list[float]:
    probs = [0.0, 0.0, 0.0]
    confidence = rng.uniform(low, high)
    others = [k for k in range(3) if k != label]
    split = rng.uniform(0.2, 0.8) * (1.0 - confidence)
    probs[label] = confidence
    probs[others[0]] = split
    probs[others[1]] = 1.0 - confidence - split
    return probs


def _country(rng: random.Random, hostile: bool) -> str:
    if hostile and rng.random() < 0.05:
        return XSS
    pick, acc = rng.random(), 0.0
    for country, (share, _) in COUNTRIES.items():
        acc += share
        if pick < acc:
            return country
    return "FR"


def _records(
    n: int, now: float, name: str, hostile: bool, seed: int, regress: bool = True
) -> tuple[list, dict]:
    """n single-row pairs spread over the hour before `now`, and the truth per request."""
    rng = random.Random(seed)
    records, truth = [], {}
    for i in range(n):
        country = _country(rng, hostile)
        disagree_rate = COUNTRIES.get(country, (0, 0.03))[1] if regress else 0.02
        label = rng.randrange(3)
        flip = rng.random() < disagree_rate
        cand_label = (label + rng.choice((1, 2))) % 3 if flip else label
        primary = _answer(rng, label, 0.55, 0.97)
        candidate = _answer(rng, cand_label, 0.6, 0.99)
        ts_ms = int((now - 3590 + 3580 * i / n) * 1000)
        rid = f"{name}-{seed}-{i}"
        timeout = rng.random() < 0.002
        records.append(
            pf.record(
                rid,
                [primary],
                None if timeout else [candidate],
                country=country,
                name=name,
                ts_ms=ts_ms,
                outcome=OUTCOME_TIMEOUT if timeout else "ok",
                primary_ms=rng.lognormvariate(3.0, 0.35),
                candidate_ms=2000.0 if timeout else rng.lognormvariate(2.8, 0.3),
            )
        )
        truth[rid] = _truth(rng, country if regress else "", flip, label, cand_label)
    return records, truth


def _truth(rng: random.Random, country: str, flip: bool, primary: int, candidate: int) -> str:
    """Where they disagree the candidate is usually right, except in BR."""
    if not flip:
        return CLASSES[primary] if rng.random() < 0.93 else CLASSES[(primary + 1) % 3]
    candidate_right = 0.2 if country == "BR" else 0.95
    return CLASSES[candidate] if rng.random() < candidate_right else CLASSES[primary]


def seed_trial(
    client: redis.Redis,
    prefix: str,
    n: int = 3000,
    name: str = "v2",
    hostile: bool = False,
    labelled: float = 0.5,
    seed: int = 7,
    now: float | None = None,
    regress: bool = True,
) -> Trial:
    """Write n pairs for `name`, run the real worker over them, send labels for a share.

    `regress=False`: a candidate that agrees about 98% everywhere (no slice stands out).
    """
    now = time.time() if now is None else now
    settings = trial_settings(prefix, (name,))
    records, truth = _records(n, now, name, hostile, seed, regress)
    pf.write(client, Keys(prefix).pairs(name), records)
    applied = pf.drain(Worker(client, settings))
    assert applied == n, f"the worker applied {applied} of {n} pairs"
    keys = Keys(prefix)
    for i, (rid, label) in enumerate(truth.items()):
        if i < labelled * n:
            record_feedback(client, keys, rid, label)
    return Trial(settings=settings, name=name, pairs=n, now=now)


@dataclass
class PageContext:
    """The duck-typed context `analysis.ui.ui_routes` needs, over a real Redis."""

    settings: Settings
    keys: Keys
    redis: Any  # redis.asyncio.Redis, used on the serving loop only
    entries: list[dict[str, Any]]
    redis_url: str | None = None

    async def candidates(self) -> list[dict[str, Any]]:
        return [dict(e) for e in self.entries]


def entry(name: str, state: str = "active", url: str = "http://127.0.0.1:8002") -> dict[str, Any]:
    """A registry entry as control.registry lists it."""
    return {"name": name, "url": url, "onnx": None, "sample": 1.0, "timeout_ms": 2000,
            "role": "candidate", "state": state, "ends_at": None}  # fmt: skip


def page_context(
    settings: Settings, redis_url: str, entries: list[dict[str, Any]], with_url: bool = True
) -> PageContext:
    """A context on `redis_url`; `with_url=False` makes the UI derive its sync client."""
    return PageContext(
        settings=settings,
        keys=Keys(settings.redis.prefix),
        redis=aredis.Redis.from_url(redis_url),
        entries=entries,
        redis_url=redis_url if with_url else None,
    )


def ui_app(ctx: PageContext) -> Starlette:
    """The UI routes alone, closing the context's async client when the server stops."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await ctx.redis.aclose()

    return Starlette(routes=ui_routes(ctx), lifespan=lifespan)
