"""Mergeable bucket state: what the worker counts per pair, and how buckets become a window.

Everything is an additive counter in one Redis hash per (candidate, time bucket), so a
window is the sum of its buckets and N workers leave exactly the state one would. Fields
(user text is joined with SEP, never with ':' so labels and slice values cannot collide;
a SEP inside a value from traffic is stored as SEP_SHOWN, see `field_text`, and a field
read back with the wrong number of parts is skipped and counted in `Summary.malformed`):

    records, rows, agree            pair records, compared rows, agreeing rows
    un umm ukk umk                  per request with m compared rows, k disagreeing:
                                    requests, sum m^2, sum k^2, sum m*k (cluster moments)
    err:<kind>                      records per failure: primary (non-2xx), unparseable
                                    primary, and the candidate's timeout / http_error /
                                    error / unparseable / contract / model_load
    fm SEP p SEP c                  flip matrix, primary label -> candidate label (ERR)
    cp:i cc:i mp:i mc:i             100-bin histograms on [0, 1]: confidence, margin
    cpn cps ccn ccs                 confidence count and sum (micro-units) per side
    dn ds dss dpos dneg             paired delta conf_c - conf_p: n, sum, sum of squares
                                    (micro-units, exact integers) and signs
    nb:PC                           near-boundary 2x2 (margin < 0.1), P/C in {0, 1}
    td:k fd:k                       rows / flips by the primary's confidence decile k
    lp:i lc:i                       latency histograms on stats.log_latency_edges()
    rn rbeyond rh:i / rs rss ras    regression rows, beyond tolerance, |d| histogram /
                                    float sums of d, d^2, |d| (HINCRBYFLOAT)
    s SEP f SEP v / sd ...          per-slice rows / disagreeing rows
    cen SEP f SEP v / ce ...        per-slice rows with both confidences / sum of
                                    conf_c - conf_p (micro-units): estimated_delta
    ces SEP f SEP v                 per-slice sum of (conf_c - conf_p)^2 (micro-units):
                                    estimated_delta's interval
    ekn/eks/ekq SEP side SEP class  rows predicted `class` by side p/c with a confidence:
                                    count, sum, sum of squares (micro): estimated.by_class
    q SEP f SEP v SEP g SEP w / qd  per pair of slice conditions (SliceLine level 2)
    ct SEP kind                     contract differences per kind
    la lb lc ld                     labelled pairs: both right, primary only, candidate
                                    only, both wrong
    lagree                          labelled pairs on which the two models agreed
    gn gerr / gap gac gd gdd gsp gsc  numeric ground truth: rows, candidate failed / float
                                    sums of |e_p|, |e_c|, |e_c|-|e_p|, its square, e_p^2, e_c^2
    kyn SEP y / kya kyb kyc         labelled rows of true class y: all, both right, only
                                    the primary, only the candidate (analysis.recall)
    kpn:d kps:d kpr:d / kc..        labelled rows per side and confidence decile d: count,
                                    confidence sum (micro-units), right (analysis.estimate)
    trimmed bad deferred            entries trimmed before reading, undecodable records,
                                    records whose candidate the worker ran itself
    mirror:sampled mirror:shed ...  added by the proxies, not the worker (common.keys
    capture:dropped                 FIELD_*): mirrors sampled, and those left without a pair
    xn xeq xs:i ...                 text rows (analysis.text_summary)

Bound: a bucket holds at most about 460 fixed fields + 2 x 1,475 latency bins + the
populated regression bins + (C + 2)^2 flip cells + 4 x sum_f (V_f + 1) slice fields
+ 2 x sum_{f<g} (V_f + 1)(V_g + 1) pair fields, where C and V_f are capped at
analysis.slices.MAX_VALUES (50) by the admitted-value sets; and never more fields than a constant
times the pairs it counted. Buckets expire after `worker.retention_hours`.

Integer fields are exact whatever the batching. The regression sums are HINCRBYFLOAT
(long double in Redis): equal across worker counts to about 1e-15 relative.
"""

from __future__ import annotations

import bisect
from collections import _count_elements, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis import stats
from analysis.sequential import RequestMoments
from analysis.slices import OTHER
from analysis.text_summary import count_text

if TYPE_CHECKING:
    from analysis.adapters.base import Prediction

SEP = "\x1f"
# What SEP becomes inside a value from traffic (a slice value, a class label): U+241F
# SYMBOL FOR UNIT SEPARATOR, so a value can never add a part to a field name.
SEP_SHOWN = "\u241f"
ERR = "ERR"  # the error class of the flip matrix: a failed candidate is evidence
CONF_BINS = 100
MICRO = 1_000_000  # confidence sums and deltas are integers in micro-units
NEAR_BOUNDARY = 0.1  # margin below this: the model barely chose
DANGEROUS_DECILE = 9  # a flip where the primary had confidence >= 0.9

# Output-derived slice features; ':' cannot appear in configured slice names.
CLASS_FEATURE = "primary:class"
CONFIDENCE_FEATURE = "primary:confidence"
LABEL_FEATURE = "@label"  # admitted-set name for the flip matrix's classes

LATENCY_EDGES = stats.log_latency_edges()
DIFF_EDGES = stats.log_latency_edges(1e-9, 1e12, 0.01)
_LATENCY_EDGES = LATENCY_EDGES.tolist()
_DIFF_EDGES = DIFF_EDGES.tolist()
CONF_EDGES = np.linspace(0.0, 1.0, CONF_BINS + 1)

FLOAT_FIELDS = frozenset({"rs", "rss", "ras"})
# Numeric ground truth (join.lua): sums of |error| per side, of the change |e_c| - |e_p|
# and its square, and of squared errors per side.
FLOAT_FIELDS |= {"gap", "gac", "gd", "gdd", "gsp", "gsc"}

# Precomputed field names for the hot loop (avoid formatting a string per row).
_CP = [f"cp:{i}" for i in range(CONF_BINS)]
_CC = [f"cc:{i}" for i in range(CONF_BINS)]
_MP = [f"mp:{i}" for i in range(CONF_BINS)]
_MC = [f"mc:{i}" for i in range(CONF_BINS)]
_LP = [f"lp:{i}" for i in range(len(_LATENCY_EDGES) - 1)]
_LC = [f"lc:{i}" for i in range(len(_LATENCY_EDGES) - 1)]
_LAST_LATENCY_BIN = len(_LATENCY_EDGES) - 2
_bisect_right = bisect.bisect_right
_TD = [f"td:{i}" for i in range(10)]
_FD = [f"fd:{i}" for i in range(10)]
_DECILE_NAMES = [f"{i / 10:.1f}-{(i + 1) / 10:.1f}" for i in range(10)]

Fold = Callable[[str, str], str]


@dataclass(slots=True)
class PairEvidence:
    """One pair record, understood: everything the summaries count about it.

    `rows` holds the compared rows when the candidate answered (RowComparison from
    analysis.compare); when it did not, `candidate_error` names why and every row of
    `primary_rows` counts against the class ERR. `slice_rows` has one dict per row.
    """

    request_id: str
    ts_ms: int
    primary_ms: float
    candidate_ms: float | None
    primary_failure: str | None = None  # "primary" (non-2xx) or "unparseable"
    candidate_error: str | None = None  # candidate outcome kind, or unparseable / contract
    rows: Sequence[Any] = ()
    primary_rows: Sequence[Prediction] = ()
    contract_kinds: Sequence[str] = ()
    slice_rows: Sequence[dict[str, str]] = ()
    deferred: bool = False
    answer_flags: list[str] = field(default_factory=list)  # hostile answers, by kind

    @property
    def n_rows(self) -> int:
        """Compared rows this record contributes (0 when the primary failed)."""
        if self.primary_failure is not None:
            return 0
        return len(self.primary_rows) if self.candidate_error else len(self.rows)

    def row_agreement(self) -> list[bool]:
        """Per-row agreement, ERR rows disagreeing."""
        if self.primary_failure is not None:
            return []
        if self.candidate_error:
            return [False] * len(self.primary_rows)
        return [bool(r.agree) for r in self.rows]

    def labels(self) -> tuple[str | None, str | None]:
        """First row's (primary, candidate) labels; candidate None for ERR."""
        if self.primary_failure is not None or not self.primary_rows:
            return None, None
        primary = self.primary_rows[0].label
        if self.candidate_error or not self.rows:
            return primary, None
        return primary, self.rows[0].candidate.label


def bucket_start(ts_ms: int, bucket_seconds: int) -> int:
    """Epoch second at which the bucket holding `ts_ms` starts."""
    seconds = ts_ms // 1000
    return seconds - seconds % bucket_seconds


def conf_bin(value: float) -> int:
    """Bin of a probability on the fixed 100-bin grid (1.0 goes to the last bin)."""
    index = int(value * CONF_BINS)
    return 0 if index < 0 else (CONF_BINS - 1 if index >= CONF_BINS else index)


def latency_bin(ms: float) -> int:
    """Bin of a latency on the shared log-spaced edges (clipped at both ends)."""
    index = bisect.bisect_right(_LATENCY_EDGES, ms) - 1
    return min(max(index, 0), len(_LATENCY_EDGES) - 2)


def diff_bin(abs_diff: float) -> int:
    """Bin of a regression |difference| on log-spaced edges from 1e-9 (clipped)."""
    index = bisect.bisect_right(_DIFF_EDGES, abs_diff) - 1
    return min(max(index, 0), len(_DIFF_EDGES) - 2)


def decile_name(decile: int) -> str:
    """Slice value naming a confidence decile, e.g. '0.9-1.0'."""
    return _DECILE_NAMES[decile]


def field_text(value: str) -> str:
    """A value from traffic made safe inside a field name: SEP becomes SEP_SHOWN.

    Fields are split on SEP when read, so one SEP smuggled in by a request (a slice value
    `x\\u001fy`) would shift every part after it; the report would fail for everyone.
    """
    return value.replace(SEP, SEP_SHOWN)


def slice_field(feature: str, value: str, disagree: bool = False) -> str:
    """Hash field of a level-1 slice count."""
    return f"{'sd' if disagree else 's'}{SEP}{feature}{SEP}{value}"


class BucketDelta:
    """Increments for one bucket: integers (HINCRBY) and floats (HINCRBYFLOAT)."""

    __slots__ = ("floats", "ints")

    def __init__(self) -> None:
        self.ints: defaultdict[str, int] = defaultdict(int)
        self.floats: defaultdict[str, float] = defaultdict(float)


class _Names:
    """Counter names that depend on values from traffic, built once per value for one
    fold (a batch's: admission decisions do not change while it is counted). A batch
    repeats the same few classes and slice values, so the fold, the SEP escaping and the
    name formatting run once per value instead of for every row. Bounded: cleared when full.
    """

    __slots__ = ("fm", "fold", "kc", "kp", "labels", "values")
    LIMIT = 4096

    def __init__(self, fold: Fold) -> None:
        self.fold = fold
        self.labels: dict[str, str] = {}  # raw class label -> folded
        self.values: dict[tuple[str, str], str] = {}  # (feature, raw value) -> folded
        self.fm: dict[tuple[str, str | None], str] = {}  # (primary, candidate) -> flip cell
        self.kp: dict[str, tuple[str, str, str]] = {}  # primary's class -> ekn, eks, ekq
        self.kc: dict[str, tuple[str, str, str]] = {}  # candidate's class -> the same

    def label(self, raw: str) -> str:
        """The class label as the flip matrix counts it (folded, SEP shown)."""
        found = self.labels.get(raw)
        if found is None:
            if len(self.labels) >= self.LIMIT:
                self.labels.clear()
            found = self.labels[raw] = self.fold(LABEL_FEATURE, field_text(raw))
        return found

    def value(self, feature: str, raw: str) -> str:
        """A slice value as counted (folded, SEP shown)."""
        key = (feature, raw)
        found = self.values.get(key)
        if found is None:
            if len(self.values) >= self.LIMIT:
                self.values.clear()
            found = self.values[key] = self.fold(feature, field_text(raw))
        return found

    def flip(self, primary: str, candidate: str | None) -> str:
        """The flip-matrix cell of a row (candidate None: the error class)."""
        key = (primary, candidate)
        found = self.fm.get(key)
        if found is None:
            if len(self.fm) >= self.LIMIT:
                self.fm.clear()
            clabel = ERR if candidate is None else self.label(candidate)
            found = self.fm[key] = f"fm{SEP}{self.label(primary)}{SEP}{clabel}"
        return found

    def by_class(self, side: str, raw: str) -> tuple[str, str, str]:
        """The (count, sum, sum of squares) names of a side's predicted class."""
        cache = self.kp if side == "p" else self.kc
        found = cache.get(raw)
        if found is None:
            if len(cache) >= self.LIMIT:
                cache.clear()
            tail = f"{SEP}{side}{SEP}{self.label(raw)}"
            found = cache[raw] = ("ekn" + tail, "eks" + tail, "ekq" + tail)
        return found


@dataclass
class BatchDelta:
    """A batch of evidence aggregated locally into per-bucket counter increments."""

    bucket_seconds: int
    buckets: dict[int, BucketDelta] = field(default_factory=dict)
    _names: _Names | None = field(default=None, init=False, repr=False, compare=False)

    def names(self, fold: Fold) -> _Names:
        """The name cache of this fold (a new one when the fold changes)."""
        names = self._names
        if names is None or names.fold is not fold:
            names = self._names = _Names(fold)
        return names

    def bucket(self, start: int) -> BucketDelta:
        """The increments of one bucket, created on first use."""
        delta = self.buckets.get(start)
        if delta is None:
            delta = self.buckets[start] = BucketDelta()
        return delta

    def add(self, ev: PairEvidence, fold: Fold) -> None:
        """Count one record; `fold(feature, value)` maps values beyond the cap to OTHER."""
        seconds = ev.ts_ms // 1000  # bucket_start, inline: this runs for every record
        start = seconds - seconds % self.bucket_seconds
        delta = self.buckets.get(start) or self.bucket(start)
        ints = delta.ints
        # The record's counters that grow by one, added at once in C (_count_each) at the
        # end: a compared row has some forty of them, each a dict update in Python.
        ones: list[str] = ["records"]
        _count_record(ones, ev)
        if ev.primary_failure is not None:
            _count_each(ints, ones)
            return
        for kind in ev.contract_kinds:
            ones.append(f"ct{SEP}{kind}")
        names = self.names(fold)
        if ev.candidate_error:
            _count_error_rows(ints, ones, ev, names)
            rows = disagree = len(ev.primary_rows)
        else:
            disagree = _count_rows(delta, ones, ev, names)
            rows = len(ev.rows)
        _count_request(ints, ones, rows, disagree)
        _count_each(ints, ones)

    def add_trimmed(self, count: int, now_s: float) -> None:
        """Entries trimmed from the stream before any worker read them (counted, not lost)."""
        self.bucket(bucket_start(int(now_s * 1000), self.bucket_seconds)).ints["trimmed"] += count

    def add_bad(self, ts_ms: int) -> None:
        """A stream entry that is not a pair record this version understands."""
        self.bucket(bucket_start(ts_ms, self.bucket_seconds)).ints["bad"] += 1


def _count_record(ones: list[str], ev: PairEvidence) -> None:
    """Per-record counters: failures by kind and both latencies (into `ones`)."""
    if ev.deferred:
        ones.append("deferred")
    if ev.primary_failure is not None:
        ones.append(f"err:{ev.primary_failure}")
    elif ev.candidate_error:
        ones.append(f"err:{ev.candidate_error}")
    for flag in ev.answer_flags:  # a fixed vocabulary (analysis.text_summary.HOSTILE)
        ones.append(f"xh:{flag}")
    # latency_bin, inline: this runs for every record
    last = _LAST_LATENCY_BIN
    if ev.primary_ms > 0:
        i = _bisect_right(_LATENCY_EDGES, ev.primary_ms) - 1
        ones.append(_LP[0 if i < 0 else (last if i > last else i)])
    if ev.candidate_ms is not None and ev.candidate_ms > 0:
        i = _bisect_right(_LATENCY_EDGES, ev.candidate_ms) - 1
        ones.append(_LC[0 if i < 0 else (last if i > last else i)])


def slice_items(ev: PairEvidence, i: int, primary: Prediction, fold: Fold) -> list[tuple[str, str]]:
    """Row i's (feature, folded value) pairs, output-derived ones included, sorted."""
    rows = ev.slice_rows
    items = [(f, fold(f, field_text(v))) for f, v in rows[i].items()] if rows else []
    if primary.label is not None:
        items.append((CLASS_FEATURE, fold(LABEL_FEATURE, field_text(primary.label))))
    if primary.confidence is not None:
        items.append((CONFIDENCE_FEATURE, _DECILE_NAMES[conf_bin(primary.confidence) // 10]))
    items.sort()
    return items


def _row_items(
    ev: PairEvidence, i: int, primary: Prediction, names: _Names
) -> list[tuple[str, str]]:
    """slice_items through the batch's name cache (the same list)."""
    rows = ev.slice_rows
    value = names.value
    items = [(f, value(f, v)) for f, v in rows[i].items()] if rows else []
    if primary.label is not None:
        items.append((CLASS_FEATURE, names.label(primary.label)))
    conf = primary.confidence
    if conf is not None:  # conf_bin, inline
        b = int(conf * CONF_BINS)
        b = 0 if b < 0 else (CONF_BINS - 1 if b >= CONF_BINS else b)
        items.append((CONFIDENCE_FEATURE, _DECILE_NAMES[b // 10]))
    items.sort()
    return items


# The counter names of a row's slice conditions, by the conditions: rows repeat the same
# few combinations, so their names are built once. Bounded: cleared when full.
SliceNames = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[tuple[str, str], ...]]
_SLICE_FIELDS: dict[tuple[tuple[str, str], ...], SliceNames] = {}
# Adds 1 to each name's counter in one C loop (what Counter.update does with a sequence):
# a record's counters that grow by one are gathered in a list and counted by one call.
_count_each = _count_elements
_SLICE_FIELDS_MAX = 4096


def _slice_fields(items: list[tuple[str, str]]) -> SliceNames:
    """(every row's counter names, every disagreeing row's, the conditions' cen names and
    their (ce, ces) names: the confidence change's sums) for these sorted conditions."""
    key = tuple(items)
    found = _SLICE_FIELDS.get(key)
    if found is not None:
        return found
    singles = [f"{f}{SEP}{v}" for f, v in items]
    pairs = [
        f"{singles[i]}{SEP}{singles[j]}"
        for i in range(len(singles) - 1)
        for j in range(i + 1, len(singles))
    ]
    rows = tuple([f"s{SEP}{n}" for n in singles] + [f"q{SEP}{n}" for n in pairs])
    disagree = tuple([f"sd{SEP}{n}" for n in singles] + [f"qd{SEP}{n}" for n in pairs])
    counted = tuple(f"cen{SEP}{n}" for n in singles)
    sums = tuple((f"ce{SEP}{n}", f"ces{SEP}{n}") for n in singles)
    if len(_SLICE_FIELDS) >= _SLICE_FIELDS_MAX:
        _SLICE_FIELDS.clear()
    found = _SLICE_FIELDS[key] = (rows, disagree, counted, sums)
    return found


# A side's one-step counters of a confidence in bin b: the histogram bin and the count
# (both sides), and the primary's rows of the decile, with its flips when the row flips.
_P_CONF = [(_CP[b], "cpn", _TD[b // 10]) for b in range(CONF_BINS)]
_P_CONF_FLIP = [(_CP[b], "cpn", _TD[b // 10], _FD[b // 10]) for b in range(CONF_BINS)]
_C_CONF = [(_CC[b], "ccn") for b in range(CONF_BINS)]
_ROW_AGREES, _ROW_FLIPS = ("rows", "agree"), ("rows",)


def _count_primary_side(
    ints: defaultdict[str, int], ones: list[str], p: Prediction, flipped: bool
) -> int | None:
    """Primary confidence counters; returns the margin-near flag (None if unknown)."""
    conf = p.confidence
    if conf is None:
        return None
    b = conf_bin(conf)
    ones += _P_CONF_FLIP[b] if flipped else _P_CONF[b]
    ints["cps"] += round(conf * MICRO)
    if p.margin is None:
        return None
    ones.append(_MP[conf_bin(p.margin)])
    return 1 if p.margin < NEAR_BOUNDARY else 0


def _count_regression(delta: BucketDelta, row: Any) -> None:
    """Difference moments and |d| histogram for numeric outputs."""
    d = row.diff
    if d is None:
        return
    ints, floats = delta.ints, delta.floats
    abs_d = abs(d)
    ints["rn"] += 1
    ints[f"rh:{diff_bin(abs_d)}"] += 1
    if not row.agree:
        ints["rbeyond"] += 1
    floats["rs"] += d
    floats["rss"] += d * d
    floats["ras"] += abs_d


_ONE_ROW_AGREES, _ONE_ROW_FLIPS = ("un", "umm"), ("un", "umm", "ukk", "umk")


def _count_request(ints: defaultdict[str, int], ones: list[str], rows: int, disagree: int) -> None:
    """Request-level moments (un, umm, ukk, umk): the request is the statistical unit, and
    these sums give the cluster-robust variance of the agreement rate (see
    analysis.sequential.RequestMoments)."""
    if rows <= 0:
        return
    if rows == 1:  # the usual request: every moment grows by 0 or 1
        ones += _ONE_ROW_FLIPS if disagree else _ONE_ROW_AGREES
        return
    ones.append("un")
    ints["umm"] += rows * rows
    ints["ukk"] += disagree * disagree
    ints["umk"] += rows * disagree


def _count_rows(delta: BucketDelta, ones: list[str], ev: PairEvidence, names: _Names) -> int:
    """Rows the candidate answered: agreement, flips, confidence, regression, slices.

    Returns how many of them disagree."""
    ints = delta.ints
    disagree = 0
    for i, row in enumerate(ev.rows):
        p, c = row.primary, row.candidate
        agree = bool(row.agree)
        ones += _ROW_AGREES if agree else _ROW_FLIPS
        if p.label is not None:
            ones.append(names.flip(p.label, c.label))
        d = _count_confidences(ints, ones, p, c, agree, names)
        if row.diff is not None:
            _count_regression(delta, row)
        if p.text is not None and c.text is not None:
            count_text(ints, row)
        items = _row_items(ev, i, p, names)
        if items:
            _count_row_slices(ints, ones, items, agree, d, p, c)
        disagree += not agree
    return disagree


_NB = ("nb:00", "nb:01", "nb:10", "nb:11")  # near-boundary cell by 2 * near_p + near_c
_DELTA_UP, _DELTA_DOWN, _DELTA_SAME = ("dn", "dpos"), ("dn", "dneg"), ("dn",)


def _count_confidences(
    ints: defaultdict[str, int],
    ones: list[str],
    p: Prediction,
    c: Prediction,
    agree: bool,
    names: _Names,
) -> int | None:
    """Both sides' confidence and margin histograms and sums, per-class confidence
    (analysis.estimate), the near-boundary cell and the paired delta; in one function, as
    this runs for every row. Counters that grow by one go to `ones`. Returns the delta in
    micro-units (None: a side has none)."""
    pconf, cconf = p.confidence, c.confidence
    near_p = near_c = None
    if pconf is not None:
        b = conf_bin(pconf)
        micro = round(pconf * MICRO)
        ones += _P_CONF[b] if agree else _P_CONF_FLIP[b]
        ints["cps"] += micro
        if p.margin is not None:
            ones.append(_MP[conf_bin(p.margin)])
            near_p = 1 if p.margin < NEAR_BOUNDARY else 0
        if p.label is not None:
            n_name, s_name, q_name = names.by_class("p", p.label)
            ones.append(n_name)
            ints[s_name] += micro
            ints[q_name] += round(pconf * pconf * MICRO)
    if cconf is not None:
        micro = round(cconf * MICRO)
        ones += _C_CONF[conf_bin(cconf)]
        ints["ccs"] += micro
        if c.margin is not None:
            ones.append(_MC[conf_bin(c.margin)])
            near_c = 1 if c.margin < NEAR_BOUNDARY else 0
        if c.label is not None:
            n_name, s_name, q_name = names.by_class("c", c.label)
            ones.append(n_name)
            ints[s_name] += micro
            ints[q_name] += round(cconf * cconf * MICRO)
    if near_p is not None and near_c is not None:
        ones.append(_NB[2 * near_p + near_c])
    if pconf is None or cconf is None:
        return None
    d = round((cconf - pconf) * MICRO)  # paired delta in exact micro-unit integers
    ones += _DELTA_UP if d > 0 else (_DELTA_DOWN if d < 0 else _DELTA_SAME)
    ints["ds"] += d
    ints["dss"] += d * d
    return d


def _count_row_slices(
    ints: defaultdict[str, int],
    ones: list[str],
    items: list[tuple[str, str]],
    agree: bool,
    d: int | None,
    p: Prediction,
    c: Prediction,
) -> None:
    """A row's level-1 and level-2 slice counters and, with both confidences, per slice
    the rows and the sums of conf_c - conf_p and its square (micro): the slice's estimated
    accuracy change before labels (analysis.estimate)."""
    rows, disagreeing, counted, sums = _slice_fields(items)
    ones += rows
    if not agree:
        ones += disagreeing
    if d is None:
        return
    d2 = round((c.confidence - p.confidence) ** 2 * MICRO)  # type: ignore[operator]
    ones += counted
    for d_name, d2_name in sums:
        ints[d_name] += d
        ints[d2_name] += d2


def _count_error_rows(
    ints: defaultdict[str, int], ones: list[str], ev: PairEvidence, names: _Names
) -> None:
    """The candidate gave no usable answer: every primary row flips to ERR."""
    for i, p in enumerate(ev.primary_rows):
        ones.append("rows")
        if p.label is not None:
            ones.append(names.flip(p.label, None))
        _count_primary_side(ints, ones, p, True)
        rows, disagreeing, _, _ = _slice_fields(_row_items(ev, i, p, names))
        ones += rows
        ones += disagreeing  # every row disagrees


# --------------------------------------------------------------------------------------
# Reading: buckets merged into a window
# --------------------------------------------------------------------------------------


def merge_raw(buckets: Iterable[dict[bytes, bytes]]) -> dict[str, float | int]:
    """Sum HGETALL results field by field (ints exact; the few float fields as floats)."""
    acc: dict[bytes, int] = {}
    facc: dict[bytes, float] = {}
    float_names = {f.encode() for f in FLOAT_FIELDS}
    for raw in buckets:
        for k, v in raw.items():
            if k in float_names:
                facc[k] = facc.get(k, 0.0) + float(v)
            else:
                acc[k] = acc.get(k, 0) + int(v)
    merged: dict[str, float | int] = {k.decode(): v for k, v in acc.items()}
    merged.update({k.decode(): v for k, v in facc.items()})
    return merged


class Summary:
    """A merged window of counters, grouped for the report's questions."""

    def __init__(self, counts: dict[str, float | int]) -> None:
        self.counts = counts
        self.malformed = 0  # fields skipped: wrong number of parts (stored before SEP_SHOWN)
        # Per time bucket, each side's latency histogram ({"lp": {start: hist}, "lc": ...}):
        # set by the report's window loader; the latency rule's clusters (analysis.latency).
        self.latency_buckets: dict[str, dict[int, np.ndarray]] = {}
        self._groups: dict[str, dict[str, float | int]] = defaultdict(dict)
        for name, value in counts.items():
            kind, rest = _split_field(name)
            if rest is None:
                continue
            parts = rest.count(SEP) + 1
            if _PARTS.get(kind, parts) != parts:
                self.malformed += 1
                continue
            self._groups[kind][rest] = value

    def get(self, name: str) -> int:
        """A scalar integer counter (0 when absent)."""
        return int(self.counts.get(name, 0))

    def getf(self, name: str) -> float:
        """A scalar float counter (0.0 when absent)."""
        return float(self.counts.get(name, 0.0))

    def group(self, kind: str) -> dict[str, float | int]:
        """Every field of one kind, keyed by the rest of its name."""
        return self._groups.get(kind, {})

    def hist(self, kind: str, bins: int) -> np.ndarray:
        """A fixed-bin histogram (missing bins are zero)."""
        out = np.zeros(bins, dtype=np.int64)
        for index, value in self.group(kind).items():
            i = int(index) if index.isdecimal() else -1
            if 0 <= i < bins:
                out[i] += int(value)
        return out

    def request_moments(self) -> RequestMoments:
        """The agreement stream's request-level moments (zeros before they were counted)."""
        rows = self.get("rows")
        return RequestMoments(
            self.get("un"), rows, rows - self.get("agree"),
            self.get("umm"), self.get("ukk"), self.get("umk"),
        )  # fmt: skip

    def flip_matrix(self) -> tuple[list[str], np.ndarray]:
        """Labels (most frequent first, OTHER then ERR last) and the count matrix."""
        cells = {tuple(k.split(SEP, 1)): int(v) for k, v in self.group("fm").items()}
        totals: dict[str, int] = defaultdict(int)
        for (p, c), n in cells.items():
            totals[p] += n
            totals[c] += n
        tail = [x for x in (OTHER, ERR) if x in totals]
        head = sorted((x for x in totals if x not in (OTHER, ERR)), key=lambda x: (-totals[x], x))
        labels = head + tail
        index = {label: i for i, label in enumerate(labels)}
        matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
        for (p, c), n in cells.items():
            matrix[index[p], index[c]] += n
        return labels, matrix

    def slices(self) -> list[dict[str, Any]]:
        """Level-1 slices: [{slice, value, pairs, disagree}]."""
        disagree = self.group("sd")
        rows = []
        for key, n in self.group("s").items():
            feature, _, value = key.partition(SEP)
            rows.append(
                {
                    "slice": feature,
                    "value": value,
                    "pairs": int(n),
                    "disagree": int(disagree.get(key, 0)),
                }
            )
        rows.sort(key=lambda r: (r["slice"], -r["pairs"], r["value"]))
        return rows

    def slice_pairs(self) -> list[dict[str, Any]]:
        """Level-2 slices as discovery candidates: [{conditions, pairs, disagree}]."""
        disagree = self.group("qd")
        rows = []
        for key, n in self.group("q").items():
            f, v, g, w = key.split(SEP)
            rows.append(
                {
                    "conditions": [[f, v], [g, w]],
                    "pairs": int(n),
                    "disagree": int(disagree.get(key, 0)),
                }
            )
        return rows


# Parts after the kind, for the kinds whose fields join values with SEP.
_PARTS = {"fm": 2, "s": 2, "sd": 2, "q": 4, "qd": 4, "ct": 1, "ce": 2, "cen": 2, "ces": 2}
_PARTS.update({"ekn": 2, "eks": 2, "ekq": 2})  # estimated accuracy per predicted class
_PARTS.update({"kyn": 1, "kya": 1, "kyb": 1, "kyc": 1})  # recall per true class (join.lua)


def _split_field(name: str) -> tuple[str, str | None]:
    """'cp:17' -> ('cp', '17'); 'fm<SEP>a<SEP>b' -> ('fm', 'a<SEP>b'); 'rows' -> ('rows', None)."""
    cut = name.find(SEP)
    colon = name.find(":")
    if cut < 0 or (0 <= colon < cut):
        cut = colon
    if cut < 0:
        return name, None
    return name[:cut], name[cut + 1 :]
