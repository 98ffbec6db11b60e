"""One-feature IsolationForests compiled into packed arrays, and their vectorized decisions.

A tree of a one-feature forest sends a point left when ``x <= threshold``, so it is a
step function of x, and so is the forest's decision: between two consecutive thresholds
(of any tree) every point reaches the same leaf in every tree. A compiled forest is the
sorted unique thresholds (``cuts``) and one decision per interval between them, computed at
compile time the way scikit-learn computes it (``sklearn/ensemble/_iforest.py``: per tree
``depth[leaf] + average_path_length(n_node_samples[leaf]) - 1.0`` added tree after tree in
the forest's order, ``2 ** -(sum / (n_trees * average_path_length(max_samples)))``, negated,
minus ``offset_``). Scoring a point is then a binary search: whatever the number of trees,
and for all of a unit's sensors at once. The cuts are stored as float32 and the cuts
between equal decisions dropped (``_compact``): the same decisions for every float32 point,
in about half the bytes, and a unit reads only its own forests' bytes of a shard
(``bank._load_shard``).

scikit-learn casts the input to float32 before the trees see it; scoring does the same.
Labels follow ``IsolationForest.predict``: -1 (an anomaly) only where the decision is < 0.
Points whose decision is within ``FOREST_TOLERANCE`` of 0, or whose value is not finite as
float32 (NaN follows the trees' missing-value routing; overflow is scikit-learn's to judge),
are left to scikit-learn itself by the caller. A forest is compiled only if the compiled copy
agrees with scikit-learn on probe points around its thresholds and beyond its range.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from fleetscore.core.sensor_codes import key_positions
from fleetscore.core.sensors import Sensor

# Decisions lie in [-1, 1]; the compiled and scikit-learn's computations differ by a few
# units in the last place at most (the same operations; only pow may be another build's).
FOREST_TOLERANCE = 1e-9
PROBE_CUTS = 128  # thresholds probed (each with its float32 neighbours) per compiled forest
PROBE_RANDOM = 48
PROBE_SEED = 20240302  # fixed: compiling the same bytes always gives the same verdict


@dataclass(frozen=True)
class CompiledForest:
    """``decisions[k]`` is the decision of every x (as float32) with exactly k cuts below it."""

    cuts: np.ndarray  # sorted, unique; float32 when compiled (float64 in older shards)
    decisions: np.ndarray  # len(cuts) + 1, float64
    near: NearZero | None = None  # scikit-learn's own last steps for intervals near 0


@dataclass(frozen=True, eq=False)
class NearZero:
    """What scikit-learn's last steps need (``_compute_score_samples``, ``decision_function``)
    to decide the intervals whose decision is within FOREST_TOLERANCE of 0, for forest after
    forest: ``params[i]`` is forest i's (denominator, offset_), its intervals
    ``interval[offsets[i]:offsets[i + 1]]`` (sorted) with their summed path lengths ``depths``
    (additions only, so the same on every machine). Only the power is left, and it is taken
    when scoring, with this process's numpy, as scikit-learn would take it."""

    params: np.ndarray  # (forests, 2) float64
    offsets: np.ndarray  # forests + 1, int64
    interval: np.ndarray  # int64, an interval's index within its forest
    depths: np.ndarray  # float64

    @classmethod
    def of(cls, parts: list[NearZero]) -> NearZero:
        """Forest after forest (each part one or more forests)."""
        shift = np.cumsum([0] + [len(p.interval) for p in parts[:-1]])
        return cls(np.concatenate([p.params for p in parts] + [np.zeros((0, 2))]),
                   np.concatenate([[0]] + [p.offsets[1:] + k for p, k in zip(parts, shift,
                                                                              strict=True)]
                                  ).astype(np.int64),
                   np.concatenate([p.interval for p in parts] + [np.zeros(0, np.int64)]),
                   np.concatenate([p.depths for p in parts] + [np.zeros(0)]))

    def select(self, entries: np.ndarray) -> NearZero:
        starts, lengths = self.offsets[entries], self.offsets[entries + 1] - self.offsets[entries]
        at = concat_ranges(starts, lengths)
        return NearZero(self.params[entries], np.concatenate(([0], np.cumsum(lengths))),
                        self.interval[at], self.depths[at])

    def decisions(self, entry: np.ndarray, interval: np.ndarray) -> np.ndarray:
        """scikit-learn's decisions of points in these intervals of these forests, NaN where
        none is kept. Its own operations in its order: the depths divided by the denominator
        (1 where it is 0), negated, 2 to that power, negated, minus offset_."""
        depths = np.full(len(entry), np.nan)
        for row, (i, k) in enumerate(zip(entry.tolist(), interval.tolist(), strict=True)):
            mine = self.interval[self.offsets[i] : self.offsets[i + 1]]
            at = int(np.searchsorted(mine, k))
            if at < len(mine) and mine[at] == k:
                depths[row] = self.depths[self.offsets[i] + at]
        denominator, offset = self.params[entry, 0], self.params[entry, 1]
        with np.errstate(all="ignore"):
            scores = 2 ** (-np.divide(depths, denominator, out=np.ones_like(depths),
                                      where=denominator != 0))
        return -scores - offset


def compile_forest(estimator) -> tuple[CompiledForest | None, str | None]:
    """The compiled copy of a fitted one-feature IsolationForest, or why there is none."""
    from sklearn.ensemble import IsolationForest

    if type(estimator) is not IsolationForest:
        return None, f"{type(estimator).__name__} is not an IsolationForest"
    shape = _shape_problem(estimator)
    if shape:
        return None, shape
    compiled = _compile(estimator)
    reason = forest_probe_disagreement(estimator, compiled)
    return (None, reason) if reason else (compiled, None)


def _shape_problem(forest) -> str | None:
    if getattr(forest, "n_features_in_", None) != 1:
        return "IsolationForest fitted on more than one feature"
    for tree, features in zip(forest.estimators_, forest.estimators_features_, strict=True):
        t = tree.tree_
        if list(np.ravel(features)) != [0] or (t.feature[t.children_left != -1] != 0).any():
            return "IsolationForest whose trees split on another feature"
    return None


def _compile(forest) -> CompiledForest:
    return _compact(*step_function(forest))


def step_function(forest) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The forest's sorted unique thresholds (float64), the decision of each interval they
    close (what a format 3 bank stored) and its summed path lengths, and the forest's
    (denominator, offset_), before ``_compact``."""
    from sklearn.ensemble._iforest import _average_path_length

    trees = [tree.tree_ for tree in forest.estimators_]
    cuts = np.unique(np.concatenate(
        [t.threshold[t.children_left != -1] for t in trees] + [np.zeros(0)])).astype(np.float64)
    # One representative per interval: the cut closing it (x <= cut), and +inf after the last.
    reps = np.concatenate([cuts, [np.inf]])
    depths = np.zeros(len(reps))
    for t in trees:  # in the forest's order, as scikit-learn adds them
        path = t.compute_node_depths()
        average = _average_path_length(t.n_node_samples)
        leaf = _leaves(t, reps)
        depths += path[leaf] + average[leaf] - 1.0
    denominator = len(trees) * _average_path_length([forest.max_samples_])
    with np.errstate(all="ignore"):
        scores = 2 ** (-np.divide(depths, denominator, out=np.ones_like(depths),
                                  where=denominator != 0))
    decisions = -scores - forest.offset_
    params = np.array([[float(np.ravel(denominator)[0]), float(forest.offset_)]])
    return cuts, np.asarray(decisions, dtype=np.float64), depths, params


def _compact(cuts: np.ndarray, decisions: np.ndarray, depths: np.ndarray | None = None,
             params: np.ndarray | None = None) -> CompiledForest:
    """The same step function of float32 points in fewer, smaller numbers.

    Every point is a float32 (scikit-learn's input), so ``x <= t`` is ``x <= t32`` for t32 the
    largest float32 not above t: each cut is stored as that float32 (half the bytes). Cuts
    equal after rounding close intervals no float32 lies in: only the decisions below the
    first and above the last of them are reachable. Then a cut between two equal summed path
    lengths (so equal decisions, on any machine) changes nothing (a tree whose leaf changes
    there for one of the same depth and size, as two single-point leaves are): it goes, with
    the repeated decision. Decisions are kept bit for bit; with ``depths`` and ``params``,
    those of the intervals near 0 are kept too (``NearZero``)."""
    depths = decisions if depths is None else depths
    keep = np.zeros(1, np.intp)  # the intervals kept: the first, then one after each cut kept
    if len(cuts):
        with np.errstate(over="ignore"):
            low = cuts.astype(np.float32)  # nearest; beyond float32's range it is +-inf
        above = low.astype(np.float64) > cuts
        low[above] = np.nextafter(low[above], np.float32(-np.inf))
        last = np.flatnonzero(np.r_[low[1:] != low[:-1], True])  # each group's last cut
        after = last + 1
        differs = np.flatnonzero(depths[after] != depths[np.r_[0, after[:-1]]])
        cuts, keep = low[last[differs]], np.r_[keep, after[differs]]
    decisions = np.ascontiguousarray(decisions[keep])
    near = None
    if params is not None:
        close = np.flatnonzero(forest_near_boundary(decisions))
        near = NearZero(params.reshape(1, 2), np.array([0, len(close)], np.int64),
                        close.astype(np.int64), np.ascontiguousarray(depths[keep][close]))
    return CompiledForest(np.ascontiguousarray(cuts, dtype=np.float32), decisions, near)


def _leaves(t, x: np.ndarray) -> np.ndarray:
    """The leaf each x reaches in the tree ``t`` (scikit-learn's rule: left when x <= threshold)."""
    left, right, threshold = t.children_left, t.children_right, t.threshold
    node = np.zeros(len(x), dtype=np.intp)
    for _ in range(int(t.max_depth)):
        inner = left[node] != -1
        node = np.where(inner, np.where(x <= threshold[node], left[node], right[node]), node)
    return node


def probe_values(compiled: CompiledForest) -> np.ndarray:
    """The float32 values at and next to a sample of the cuts (where a < for a <= would show),
    and random points around and far beyond them."""
    cuts = compiled.cuts
    if len(cuts):
        at = np.unique(np.linspace(0, len(cuts) - 1, min(len(cuts), PROBE_CUTS)).astype(np.intp))
        near = cuts[at].astype(np.float32)
        points = np.concatenate([near, np.nextafter(near, np.float32(np.inf)),
                                 np.nextafter(near, np.float32(-np.inf))]).astype(np.float64)
        lo, hi = float(cuts[0]), float(cuts[-1])
    else:
        points, lo, hi = np.zeros(0), -1.0, 1.0
    width = max(hi - lo, abs(hi), abs(lo), 1.0)
    spread = np.random.default_rng(PROBE_SEED).uniform(lo - width, hi + width, PROBE_RANDOM)
    far = np.array([lo - 10 * width, hi + 10 * width, lo - 1e3 * width, hi + 1e3 * width, 0.0])
    # A point in each interval kept near 0: the cut closing it, or the float32 after the last.
    if compiled.near is not None and len(compiled.near.interval):
        closing = np.append(cuts.astype(np.float32), np.float32(np.inf))
        inside = closing[compiled.near.interval]
        ends = ~np.isfinite(inside)
        inside[ends] = np.nextafter(np.float32(cuts[-1]) if len(cuts) else np.float32(0),
                                    np.float32(np.inf))
        points = np.concatenate([points, inside.astype(np.float64)])
    probes = np.concatenate([points, spread, far])
    with np.errstate(all="ignore"):
        fits = np.isfinite(probes.astype(np.float32))
    return probes[fits]


def forest_probe_disagreement(estimator, compiled: CompiledForest) -> str | None:
    """None when the compiled copy gives scikit-learn's decisions (within the tolerance) and
    labels on every probe point; otherwise why not."""
    probes = probe_values(compiled)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = np.asarray(estimator.decision_function(probes.reshape(-1, 1)), np.float64)
        labels = np.asarray(estimator.predict(probes.reshape(-1, 1)))
    got = forest_decisions(compiled, probes)
    if not (np.isfinite(got).all() and np.isfinite(expected).all()):
        return "IsolationForest whose decisions are not finite on probe points"
    if (np.abs(got - expected) > FOREST_TOLERANCE).any():
        return "IsolationForest whose compiled decisions differ from scikit-learn's on probe points"
    settled = ~forest_near_boundary(got)
    if ((got < 0) != (labels == -1))[settled].any():
        return "IsolationForest whose compiled labels differ from scikit-learn's on probe points"
    exact, left = forest_settled(compiled, probes)
    if not (exact[~left] == expected[~left]).all() or (labels[~left] == -1).tolist() != \
            (exact[~left] < 0).tolist():
        return "IsolationForest whose decisions near 0 differ from scikit-learn's on probe points"
    return None


def forest_settled(compiled: CompiledForest, values: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """One compiled forest's decisions, those near 0 settled where it keeps them
    (``settle_forests``), and the points left for scikit-learn."""
    forests = Forests.of([(Sensor.unchecked("m", "0"), "", compiled)])
    values = np.asarray(values, dtype=np.float64)
    return settle_forests(forests, np.zeros(1, np.int64), np.zeros(1, np.int64),
                          np.array([len(values)], np.int64), values)


def forest_near_boundary(decision: np.ndarray) -> np.ndarray:
    """Points scikit-learn decides itself: within the tolerance of 0, or not finite."""
    with np.errstate(invalid="ignore"):
        return ~(np.abs(decision) >= FOREST_TOLERANCE)


def forest_decisions(compiled: CompiledForest, values: np.ndarray) -> np.ndarray:
    """One compiled forest's decisions (NaN where scikit-learn must decide)."""
    forests = Forests.of([(Sensor.unchecked("m", "0"), "", compiled)])
    values = np.asarray(values, dtype=np.float64)
    return decide_forests(forests, np.zeros(1, np.int64), np.zeros(1, np.int64),
                          np.array([len(values)], np.int64), values)


# --- packed -----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Forests:
    """Compiled forests as packed arrays: entry i is sensor ``ids[i]`` (``Device/Tag``),
    compiled from the model bytes of hash ``sha[i]``, with cuts ``offsets[i]:offsets[i + 1]``
    and decisions ``offsets[i] + i : offsets[i + 1] + i + 1`` (one more than its cuts).
    ``near``: the intervals near 0 of every entry (None: not kept, as in shards before
    format 5; scikit-learn decides those points)."""

    ids: pa.Array
    sha: np.ndarray
    offsets: np.ndarray
    cuts: np.ndarray
    decisions: np.ndarray
    near: NearZero | None = None

    @classmethod
    def empty(cls) -> Forests:
        return cls(pa.array([], pa.string()), np.zeros(0, "U64"), np.zeros(1, np.int64),
                   np.zeros(0, np.float32), np.zeros(0))

    @classmethod
    def of(cls, entries: Iterable[tuple[Sensor, str, CompiledForest]]) -> Forests:
        entries = list(entries)
        if not entries:
            return cls.empty()
        counts = np.array([len(c.cuts) for _, _, c in entries], dtype=np.int64)
        return cls(pa.array([f"{s.device}/{s.tag}" for s, _, _ in entries], pa.string()),
                   np.array([h for _, h, _ in entries], dtype="U64"),
                   np.concatenate(([0], np.cumsum(counts))),
                   # float32 when every forest's cuts are (compiled ones); else float64,
                   # which holds any float32 exactly
                   np.concatenate([np.asarray(c.cuts) for _, _, c in entries]),
                   np.concatenate([np.asarray(c.decisions, np.float64) for _, _, c in entries]),
                   NearZero.of([c.near for _, _, c in entries])
                   if all(c.near is not None for _, _, c in entries) else None)

    @classmethod
    def concat(cls, parts: list[Forests]) -> Forests:
        parts = [f for f in parts if len(f.ids)]
        if len(parts) <= 1:
            return parts[0] if parts else cls.empty()
        shift = np.cumsum([0] + [len(f.cuts) for f in parts[:-1]])
        return cls(pa.concat_arrays([f.ids for f in parts]), np.concatenate([f.sha for f in parts]),
                   np.concatenate([[0]] + [f.offsets[1:] + k for f, k in zip(parts, shift,
                                                                              strict=True)]),
                   np.concatenate([f.cuts for f in parts]),
                   np.concatenate([f.decisions for f in parts]),
                   NearZero.of([f.near for f in parts])
                   if all(f.near is not None for f in parts) else None)

    def select(self, entries: np.ndarray) -> Forests:
        """The given entries, in that order."""
        entries = np.asarray(entries, dtype=np.int64)
        if len(entries) == len(self.ids) and (entries == np.arange(len(entries))).all():
            return self
        starts, lengths = self.offsets[entries], self.offsets[entries + 1] - self.offsets[entries]
        cuts = concat_ranges(starts, lengths)
        decisions = concat_ranges(starts + entries, lengths + 1)
        return Forests(self.ids.take(pa.array(entries)), self.sha[entries],
                       np.concatenate(([0], np.cumsum(lengths))), self.cuts[cuts],
                       self.decisions[decisions],
                       self.near.select(entries) if self.near is not None else None)

    def index(self, keys: pa.Array) -> np.ndarray:
        """Each ``Device/Tag`` key's entry, -1 for keys not held."""
        return key_positions(self.ids, keys)

    @functools.cached_property
    def _position(self) -> dict[str, int]:
        return {key: i for i, key in enumerate(self.ids.to_pylist())}

    def get(self, sensor: Sensor) -> CompiledForest | None:
        i = self._position.get(f"{sensor[0]}/{sensor[1]}")
        if i is None:
            return None
        a, b = self.offsets[i], self.offsets[i + 1]
        near = self.near.select(np.array([i])) if self.near is not None else None
        return CompiledForest(self.cuts[a:b], self.decisions[a + i : b + i + 1], near)

    def __len__(self) -> int:
        return len(self.ids)


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The indices starts[i] .. starts[i] + lengths[i] - 1, one range after the other."""
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + within


def decide_forests(forests: Forests, entries: np.ndarray, starts: np.ndarray,
                   stops: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Decisions for rows of ``values``: rows ``starts[i]:stops[i]`` by entry ``entries[i]``.
    Rows no run covers, and rows not finite as float32, are NaN."""
    return settle_forests(forests, entries, starts, stops, values, settle=False)[0]


def settle_forests(forests: Forests, entries: np.ndarray, starts: np.ndarray,
                   stops: np.ndarray, values: np.ndarray, *, settle: bool = True
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``decide_forests``' decisions, those near 0 taken again in scikit-learn's own last
    steps where the bank kept them (``NearZero``), and the rows left for scikit-learn itself:
    near 0 and not kept, or not finite as float32. One binary search over every row at once,
    each within its own entry's cuts."""
    out = np.full(len(values), np.nan)
    entries = np.asarray(entries, dtype=np.int64)
    if not len(entries):
        return out, np.zeros(len(values), dtype=bool)
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(stops, dtype=np.int64) - starts
    rows = concat_ranges(starts, lengths)
    entry = np.repeat(entries, lengths)
    with np.errstate(over="ignore", invalid="ignore"):
        x = values[rows].astype(np.float32).astype(np.float64)  # scikit-learn's float32 input
    lo = _count_below(forests, entry, x) + forests.offsets[entry]
    decision = forests.decisions[lo + entry]
    decision[~np.isfinite(x)] = np.nan
    left = forest_near_boundary(decision)
    if settle and forests.near is not None and (left & np.isfinite(x)).any():
        at = np.flatnonzero(left & np.isfinite(x))
        exact = forests.near.decisions(entry[at], lo[at] - forests.offsets[entry[at]])
        kept = ~np.isnan(exact)
        decision[at[kept]] = exact[kept]
        left[at[kept]] = False
    out[rows] = decision
    unsettled = np.zeros(len(values), dtype=bool)
    unsettled[rows] = left
    return out, unsettled


def _count_below(forests: Forests, entry: np.ndarray, x: np.ndarray) -> np.ndarray:
    """For each x, how many of its entry's cuts are below it (``searchsorted(side="left")``
    within each entry's cuts, all at once)."""
    lo, hi = forests.offsets[entry], forests.offsets[entry + 1]
    start = lo
    last = max(0, len(forests.cuts) - 1)
    for _ in range(int(np.max(hi - lo, initial=0)).bit_length()):
        open_ = lo < hi
        mid = (lo + hi) // 2
        below = open_ & (forests.cuts[np.minimum(mid, last)] < x) if len(forests.cuts) \
            else np.zeros(len(x), dtype=bool)
        lo = np.where(below, mid + 1, lo)
        hi = np.where(open_ & ~below, mid, hi)
    return lo - start
