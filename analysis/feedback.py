"""Ground truth joined to pairs by request id, whichever arrives first, counted once.

A label and a pair meet in the candidate's hash slot. When the worker applies a pair it
looks for a label that came first; if there is none it leaves the pair's two predicted
labels behind. When a label comes (POST /v1/feedback -> `record_feedback`) it looks for
those predictions; if there are none it leaves the label behind. Both sides run as Lua
scripts on the same keys, so exactly one of them sees the other and counts the pair in
its bucket's a/b/c/d counters (la: both right, lb: only the primary, lc: only the
candidate, ld: both wrong; a candidate error is wrong) and each side's calibration
counters per confidence decile (kpn/kps/kpr, kcn/kcs/kcr: labelled rows, their confidence
sum in micro-units, the right ones; read by analysis.estimate). Whatever waits lives in two
generations of at most `worker.label_join_max` entries, each rotated after
`worker.label_join_hours`, so memory stays bounded however many labels never match.

A label names one answer: a request's row 0 by its request id, any other row of a batched
request as {"request_id", "row", "label"} (`join_key`; the first `worker.label_join_rows`
rows of a batch wait for labels, MAX_JOIN_ROWS by default).
"""

from __future__ import annotations

import math
import time

import redis

from analysis.adapters.base import label_text
from analysis.apply import ROLLUP_SECONDS
from analysis.summaries import MICRO, SEP
from common.keys import Keys
from common.redis_client import store_errors
from common.scripts import SCRIPTS
from common.settings import WorkerSettings


def clean_label(value: object) -> str | None:
    """A label as the text predicted labels use ('1' for 1 and 1.0), no separator inside."""
    text = label_text(value)
    return None if text is None else text.replace(SEP, " ").replace(NUMERIC, " ")


def join_value(
    bucket: int,
    primary: str,
    candidate: str | None,
    confidences: tuple[float | None, float | None] = (None, None),
) -> str:
    """What waits for a label: the pair's bucket, both labels (candidate None: error) and
    both confidences in micro-units ('' when unknown), so a joined label also counts the
    calibration of each side (join.lua: k<side>n/s/r per confidence decile)."""
    p = primary.replace(SEP, " ")
    c = "" if candidate is None else candidate.replace(SEP, " ")
    micro = [_micro(x) for x in confidences]
    return SEP.join([str(bucket), p, c, "1" if candidate is None else "0", *micro])


def join_value_scores(value: str, scores: tuple[float | None, float | None]) -> str:
    """`value` with both numeric scores appended ('' when unknown): a numeric ground truth
    joined later counts each side's error (join.lua, join_regress)."""
    return SEP.join([value, *(_score(x) for x in scores)])


def join_text(
    bucket: int,
    primary: str,
    candidate: str | None,
    confidences: tuple[float | None, float | None],
    scores: tuple[float | None, float | None],
) -> str:
    """join_value_scores(join_value(...), scores) in one join: the worker builds one per
    answered row."""
    p = primary.replace(SEP, " ")
    c = "" if candidate is None else candidate.replace(SEP, " ")
    flag = "1" if candidate is None else "0"
    parts = (str(bucket), p, c, flag, _micro(confidences[0]), _micro(confidences[1]))
    return SEP.join((*parts, _score(scores[0]), _score(scores[1])))


def _score(x: float | None) -> str:
    return "" if x is None or not math.isfinite(x) else repr(float(x))


NUMERIC = "\x1e"  # what starts a numeric ground truth waiting as a label (join.lua)


def truth_text(value: object) -> str:
    """A numeric ground truth as the text a label waits as; ValueError if not a finite number."""
    try:
        number = float(value) if not isinstance(value, bool | str) else math.nan
    except (TypeError, OverflowError):
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"a numeric ground truth must be a finite number, got {value!r}"[:200])
    return NUMERIC + repr(number)


def _micro(confidence: float | None) -> str:
    """A confidence in micro-units, clamped to [0, 1]; '' when unknown or not finite."""
    if confidence is None:
        return ""
    if 0.0 <= confidence <= 1.0:  # the usual case, NaN excluded
        return str(int(confidence * MICRO + 0.5))
    return "" if math.isnan(confidence) else ("0" if confidence < 0 else str(MICRO))


MAX_JOIN_ROWS = 64  # default rows of one batched request that wait for labels


def join_key(request_id: str, row: int = 0) -> str:
    """Where a row's predictions wait for its label: row 0 under the request id itself (a
    single-row request and a batch's first row alike), row k under id SEP k."""
    return request_id if row == 0 else f"{request_id}{SEP}{row}"


def known_candidates(client: redis.Redis, keys: Keys) -> list[str]:
    """Candidates a worker has summarised or the registry lists."""
    pipe = client.pipeline(transaction=False)
    pipe.hkeys(keys.candidates_seen())
    pipe.hkeys(keys.registry())
    seen, registered = pipe.execute()
    return sorted({n.decode() if isinstance(n, bytes) else n for n in [*seen, *registered]})


def record_feedback(
    client: redis.Redis,
    keys: Keys,
    request_id: str,
    label: object,
    worker: WorkerSettings | None = None,
    now_s: float | None = None,
    row: int = 0,
    value: float | None = None,
) -> dict[str, str]:
    """Join a ground-truth label to the request's pairs: {candidate: joined | pending}.

    Cheap (one script per candidate, pipelined) and order-free: a label for a pair not
    processed yet waits for it. Raises ValueError for a label that is not a class name.
    `value` is a numeric ground truth instead (regression: each side's error is counted).
    """
    text = truth_text(value) if value is not None else clean_label(label)
    if text is None:
        raise ValueError(f"a label must be a string, integer or boolean, got {label!r}")
    worker = worker or WorkerSettings()
    ttl = worker.label_join_hours * 3600
    now = int(now_s if now_s is not None else time.time())
    with store_errors(f"cannot record feedback for {request_id}"):
        candidates = known_candidates(client, keys)
        script = SCRIPTS["feedback"].register(client)
        pipe = client.pipeline(transaction=False)
        for name in candidates:
            preds, labels = keys.label_join(name, "preds"), keys.label_join(name, "labels")
            script.queue(
                pipe,
                preds_gen=f"{preds}:gen",
                labels_gen=f"{labels}:gen",
                preds_base=preds,
                labels_base=labels,
                bucket_base=keys.bucket_base(name),
                request_id=join_key(request_id, row),
                label=text,
                cap=worker.label_join_max,
                ttl=ttl,
                now=now,
                rollup=ROLLUP_SECONDS,
            )
        answers = pipe.execute() if candidates else []
    return {
        n: (a.decode() if isinstance(a, bytes) else a)
        for n, a in zip(candidates, answers, strict=True)
    }
