"""IsolationForests of any number of features compiled into packed node arrays, and their
decisions for many sensors' points at once.

A one-feature forest is a step function of its value (``forest.py``); with two or more
features it is not, so a compiled forest keeps the trees themselves: per node the forest
column it splits on, its threshold, its children and, computed at compile time, what a leaf
adds to a point's path length. Scoring follows scikit-learn (``sklearn/ensemble/_iforest.py``,
``_compute_score_samples``) operation for operation:

- the input is cast to float32 first, and a point goes left when ``x <= threshold`` (the
  float32 compared with the float64 threshold, as the trees' Cython does);
- a tree with a subsample of the features (``max_features`` below all of them) reads its
  columns through ``estimators_features_``; otherwise it reads the forest's columns as they are;
- per tree ``depth[leaf] + average_path_length(n_node_samples[leaf]) - 1.0``, added tree after
  tree in the forest's order; ``2 ** -(sum / (n_trees * average_path_length(max_samples)))``,
  negated, minus ``offset_``.

All (row, tree) pairs of a call walk down together, one step of depth at a time; the sums run
in the forest's tree order, so decisions equal scikit-learn's to the last bit or nearly.
Labels follow ``IsolationForest.predict``: -1 only where the decision is < 0. Rows not finite
as float32 in a column their model reads (NaN follows the trees' missing-value routing,
overflow becomes inf) are NaN here, and rows within ``TREES_TOLERANCE`` of 0 are left to
scikit-learn by the caller. A forest is compiled only if the compiled copy agrees with
scikit-learn on probe rows at and beside its thresholds, around them and far beyond them.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from fleetscore.core.sensor_codes import key_positions
from fleetscore.core.sensors import Sensor
from fleetscore.model.forest import concat_ranges

# Decisions lie in [-1, 1]; the compiled and scikit-learn's computations are the same
# operations in the same order (only pow may be another build's), a few ulps apart at most.
TREES_TOLERANCE = 1e-9
MAX_FEATURES = int(np.iinfo(np.int16).max)  # a node's column is stored as an int16
PROBE_NODES = 96  # split nodes probed (each at, above and below its threshold) per forest
PROBE_RANDOM = 64
PROBE_SEED = 20240611  # fixed: compiling the same bytes always gives the same verdict
# (row, tree) pairs walked at once: a unit's rows go in slices of about this many pairs, so
# the walk's index arrays (some 50 bytes a pair) stay tens of MB whatever the unit's size.
PAIRS_PER_CHUNK = 1 << 20


@dataclass(frozen=True)
class CompiledTrees:
    """One forest: tree k starts at node ``roots[k]``; a node's children are at ``node +
    left[node]`` and ``node + right[node]`` (-1 at leaves: relative, so forests pack and
    unpack without renumbering)."""

    n_features: int  # the forest's columns: a row's first n_features
    denominator: float  # n_trees * average_path_length(max_samples)
    offset: float  # offset_
    depth: int  # the deepest tree's: the steps down a walk takes
    roots: np.ndarray  # int32
    feature: np.ndarray  # int16, the forest's column (0 at leaves, never read there)
    threshold: np.ndarray  # float64, scikit-learn's own: left when float32(x) <= threshold
    left: np.ndarray  # int32
    right: np.ndarray  # int32
    value: np.ndarray  # float64: depth + average_path_length(n_node_samples) - 1.0


NODE_FIELDS = ("feature", "threshold", "left", "right", "value")
NODE_DTYPES = (np.int16, np.float64, np.int32, np.int32, np.float64)


def compile_trees(estimator) -> tuple[CompiledTrees | None, str | None]:
    """The compiled copy of a fitted IsolationForest, or why there is none."""
    from sklearn.ensemble import IsolationForest

    if type(estimator) is not IsolationForest:
        return None, f"{type(estimator).__name__} is not an IsolationForest"
    problem = _shape_problem(estimator)
    if problem:
        return None, problem
    compiled = _compile(estimator)
    reason = trees_probe_disagreement(estimator, compiled)
    return (None, reason) if reason else (compiled, None)


def _shape_problem(forest) -> str | None:
    if not hasattr(forest, "estimators_") or not hasattr(forest, "offset_"):
        return "IsolationForest not fitted"
    n = getattr(forest, "n_features_in_", 0)
    if not 1 <= n <= MAX_FEATURES:
        return f"IsolationForest fitted on {n} features (1 to {MAX_FEATURES} compile)"
    for tree, columns in zip(forest.estimators_, _feature_maps(forest), strict=True):
        t = tree.tree_
        inner = t.children_left != -1
        if ((t.feature[inner] < 0) | (t.feature[inner] >= len(columns))).any() or \
                ((columns < 0) | (columns >= n)).any():
            return "IsolationForest whose trees split on a column it was not fitted on"
        nodes = np.arange(t.node_count)
        # Children after their parent: the walk down always ends (scikit-learn builds so).
        if (t.children_left[inner] <= nodes[inner]).any() or \
                (t.children_right[inner] <= nodes[inner]).any():
            return "IsolationForest with a tree whose children precede their parent"
    return None


def _feature_maps(forest) -> list[np.ndarray]:
    """Each tree's forest column per tree column. scikit-learn indexes the columns only when
    the trees saw a subsample of them (``_max_features`` below all of them); otherwise every
    tree reads the forest's columns as they are, whatever ``estimators_features_`` says."""
    n = forest.n_features_in_
    subsampled = _max_features(forest) != n
    return [np.asarray(columns, np.int64) if subsampled else np.arange(n)
            for columns in forest.estimators_features_]


def _max_features(forest) -> int:
    if hasattr(forest, "_max_features"):
        return int(forest._max_features)
    # BaseBagging._fit's rule, for a forest pickled without the attribute
    wanted = forest.max_features
    count = wanted if isinstance(wanted, int) else int(wanted * forest.n_features_in_)
    return max(1, int(count))


def _compile(forest) -> CompiledTrees:
    from sklearn.ensemble._iforest import _average_path_length

    parts, roots, start = [], [], 0
    for tree, columns in zip(forest.estimators_, _feature_maps(forest), strict=True):
        t = tree.tree_
        nodes = np.arange(t.node_count)
        leaf = t.children_left == -1
        # The same elementwise sum scikit-learn forms for a leaf, for every node at once.
        value = t.compute_node_depths() + _average_path_length(t.n_node_samples) - 1.0
        parts.append((np.where(leaf, 0, columns[np.where(leaf, 0, t.feature)]),
                      np.asarray(t.threshold, np.float64),
                      np.where(leaf, -1, t.children_left - nodes),
                      np.where(leaf, -1, t.children_right - nodes), value))
        roots.append(start)
        start += t.node_count
    max_samples = getattr(forest, "_max_samples", forest.max_samples_)
    denominator = len(forest.estimators_) * _average_path_length([max_samples])
    fields = [np.ascontiguousarray(np.concatenate([p[k] for p in parts]), dtype=dtype)
              for k, dtype in enumerate(NODE_DTYPES)]
    depth = max(int(tree.tree_.max_depth) for tree in forest.estimators_)
    return CompiledTrees(int(forest.n_features_in_), float(np.ravel(denominator)[0]),
                         float(forest.offset_), depth, np.array(roots, np.int32), *fields)


# --- probes -----------------------------------------------------------------------------------


def probe_rows(compiled: CompiledTrees) -> np.ndarray:
    """Rows at and beside a sample of the thresholds (each reaching its node: where a < for a
    <= or a float64 for a float32 would show), random rows around the thresholds, and rows
    far beyond them; all finite as float32."""
    lo, hi = _column_ranges(compiled)
    width = np.maximum.reduce([hi - lo, np.abs(hi), np.abs(lo), np.ones_like(lo)])
    rng = np.random.default_rng(PROBE_SEED)
    spread = rng.uniform(lo - width, hi + width, (PROBE_RANDOM, compiled.n_features))
    far = np.array([lo - 10 * width, hi + 10 * width, lo - 1e3 * width, hi + 1e3 * width,
                    np.where(np.arange(len(lo)) % 2, lo - 10 * width, hi + 10 * width),
                    np.zeros_like(lo)])
    probes = np.concatenate([_threshold_rows(compiled, rng), spread, far])
    with np.errstate(all="ignore"):
        fits = np.isfinite(probes.astype(np.float32)).all(axis=1)
    return probes[fits]


def _column_ranges(compiled: CompiledTrees) -> tuple[np.ndarray, np.ndarray]:
    """Each column's lowest and highest finite threshold; -1 and 1 for a column never split."""
    inner = (compiled.left != -1) & np.isfinite(compiled.threshold)
    lo, hi = np.full(compiled.n_features, -1.0), np.full(compiled.n_features, 1.0)
    for column in range(compiled.n_features):
        cuts = compiled.threshold[inner & (compiled.feature == column)]
        if len(cuts):
            lo[column], hi[column] = cuts.min(), cuts.max()
    return lo, hi


def _threshold_rows(compiled: CompiledTrees, rng) -> np.ndarray:
    """For sampled split nodes: a row inside the node's box (the bounds its ancestors set), its
    column at the largest float32 not above the threshold, the next float32 up and down."""
    inner = np.flatnonzero(compiled.left != -1)
    if not len(inner):
        return np.zeros((0, compiled.n_features))
    nodes = np.unique(rng.choice(inner, min(len(inner), PROBE_NODES), replace=False))
    low, high = _boxes(compiled, nodes)
    with np.errstate(all="ignore"):
        inside = np.where(np.isfinite(high), _float32_down(high),
                          np.where(np.isfinite(low), low + np.maximum(1.0, np.abs(low)), 0.0))
        at = _float32_down(compiled.threshold[nodes])
    rows = []
    for value in (at, np.nextafter(at, np.float32(np.inf)), np.nextafter(at, np.float32(-np.inf))):
        row = inside.copy()
        row[np.arange(len(nodes)), compiled.feature[nodes]] = value
        rows.append(row)
    return np.concatenate(rows).astype(np.float64)


def _boxes(compiled: CompiledTrees, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per node, the open-below, closed-above interval of each column that reaches it."""
    inner = np.flatnonzero(compiled.left != -1)
    parent = np.full(len(compiled.left), -1)
    parent[inner + compiled.left[inner]] = inner
    parent[inner + compiled.right[inner]] = inner
    low = np.full((len(nodes), compiled.n_features), -np.inf)
    high = np.full((len(nodes), compiled.n_features), np.inf)
    row, current = np.arange(len(nodes)), nodes.copy()
    while len(current):  # one step up a level for every node at once
        up = parent[current]
        row, current, up = row[up >= 0], current[up >= 0], up[up >= 0]
        went_left = up + compiled.left[up] == current
        column, cut = compiled.feature[up], compiled.threshold[up]
        high[row[went_left], column[went_left]] = np.minimum(
            high[row[went_left], column[went_left]], cut[went_left])
        low[row[~went_left], column[~went_left]] = np.maximum(
            low[row[~went_left], column[~went_left]], cut[~went_left])
        current = up
    return low, high


def _float32_down(values: np.ndarray) -> np.ndarray:
    """The largest float32 not above each value (float32's extremes beyond its range)."""
    with np.errstate(over="ignore"):
        down = np.asarray(values, np.float64).astype(np.float32)
    above = down.astype(np.float64) > values
    down[above] = np.nextafter(down[above], np.float32(-np.inf))
    return down


def trees_probe_disagreement(estimator, compiled: CompiledTrees) -> str | None:
    """None when the compiled copy gives scikit-learn's decisions (within the tolerance) and
    labels on every probe row; otherwise why not."""
    probes = probe_rows(compiled)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = np.asarray(estimator.decision_function(probes), np.float64)
        labels = np.asarray(estimator.predict(probes))
    got = trees_decisions(compiled, probes)
    if not (np.isfinite(got).all() and np.isfinite(expected).all()):
        return "IsolationForest whose decisions are not finite on probe rows"
    if (np.abs(got - expected) > TREES_TOLERANCE).any():
        return "IsolationForest whose compiled decisions differ from scikit-learn's on probe rows"
    settled = ~trees_near_boundary(got)
    if ((got < 0) != (labels == -1))[settled].any():
        return "IsolationForest whose compiled labels differ from scikit-learn's on probe rows"
    return None


def trees_near_boundary(decision: np.ndarray) -> np.ndarray:
    """Rows scikit-learn decides itself: within the tolerance of 0, or not finite."""
    with np.errstate(invalid="ignore"):
        return ~(np.abs(decision) >= TREES_TOLERANCE)


def trees_decisions(compiled: CompiledTrees, X: np.ndarray) -> np.ndarray:
    """One compiled forest's decisions for the rows of X (NaN where scikit-learn must decide)."""
    X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    trees = Trees.of([(Sensor.unchecked("m", "0"), "", compiled)])
    return decide_trees(trees, np.zeros(1, np.int64), np.zeros(1, np.int64),
                        np.array([len(X)], np.int64), X)


# --- packed -----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Trees:
    """Compiled forests as packed arrays: entry i is sensor ``ids[i]`` (``Device/Tag``),
    compiled from the model bytes of hash ``sha[i]``, with trees ``tree_offsets[i] :
    tree_offsets[i + 1]`` of ``roots`` (node numbers from the entry's first node) and nodes
    ``offsets[i] : offsets[i + 1]`` of the node arrays."""

    ids: pa.Array
    sha: np.ndarray
    n_features: np.ndarray  # int64 per entry
    denominator: np.ndarray  # float64 per entry
    offset: np.ndarray  # float64 per entry
    depth: np.ndarray  # int64 per entry
    tree_offsets: np.ndarray
    offsets: np.ndarray
    roots: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray

    @classmethod
    def empty(cls) -> Trees:
        return cls(pa.array([], pa.string()), np.zeros(0, "U64"), np.zeros(0, np.int64),
                   np.zeros(0), np.zeros(0), np.zeros(0, np.int64), np.zeros(1, np.int64),
                   np.zeros(1, np.int64), np.zeros(0, np.int32),
                   *(np.zeros(0, dtype) for dtype in NODE_DTYPES))

    @classmethod
    def of(cls, entries: Iterable[tuple[Sensor, str, CompiledTrees]]) -> Trees:
        entries = list(entries)
        if not entries:
            return cls.empty()
        forests = [c for _, _, c in entries]
        return cls(pa.array([f"{s[0]}/{s[1]}" for s, _, _ in entries], pa.string()),
                   np.array([h for _, h, _ in entries], dtype="U64"),
                   np.array([c.n_features for c in forests], np.int64),
                   np.array([c.denominator for c in forests], np.float64),
                   np.array([c.offset for c in forests], np.float64),
                   np.array([c.depth for c in forests], np.int64),
                   _offsets([len(c.roots) for c in forests]),
                   _offsets([len(c.value) for c in forests]),
                   np.concatenate([np.asarray(c.roots, np.int32) for c in forests]),
                   *(np.concatenate([np.asarray(getattr(c, name), dtype) for c in forests])
                     for name, dtype in zip(NODE_FIELDS, NODE_DTYPES, strict=True)))

    @classmethod
    def concat(cls, parts: list[Trees]) -> Trees:
        parts = [t for t in parts if len(t)]
        if len(parts) <= 1:
            return parts[0] if parts else cls.empty()
        # Roots and children are relative: only the offsets shift.
        return cls(pa.concat_arrays([t.ids for t in parts]),
                   *(np.concatenate([getattr(t, name) for t in parts])
                     for name in ("sha", "n_features", "denominator", "offset", "depth")),
                   _concat_offsets([t.tree_offsets for t in parts]),
                   _concat_offsets([t.offsets for t in parts]),
                   *(np.concatenate([getattr(t, name) for t in parts])
                     for name in ("roots", *NODE_FIELDS)))

    def select(self, entries: np.ndarray) -> Trees:
        """The given entries, in that order."""
        entries = np.asarray(entries, dtype=np.int64)
        if len(entries) == len(self) and (entries == np.arange(len(entries))).all():
            return self
        tree_counts = self.tree_offsets[entries + 1] - self.tree_offsets[entries]
        node_counts = self.offsets[entries + 1] - self.offsets[entries]
        trees = concat_ranges(self.tree_offsets[entries], tree_counts)
        nodes = concat_ranges(self.offsets[entries], node_counts)
        return Trees(self.ids.take(pa.array(entries, pa.int64())), self.sha[entries],
                     self.n_features[entries], self.denominator[entries], self.offset[entries],
                     self.depth[entries],
                     _offsets(tree_counts), _offsets(node_counts), self.roots[trees],
                     *(getattr(self, name)[nodes] for name in NODE_FIELDS))

    def index(self, keys: pa.Array) -> np.ndarray:
        """Each ``Device/Tag`` key's entry, -1 for keys not held."""
        return key_positions(self.ids, keys)

    @functools.cached_property
    def _position(self) -> dict[str, int]:
        return {key: i for i, key in enumerate(self.ids.to_pylist())}

    def get(self, sensor: Sensor) -> CompiledTrees | None:
        i = self._position.get(f"{sensor[0]}/{sensor[1]}")
        if i is None:
            return None
        a, b = self.offsets[i], self.offsets[i + 1]
        return CompiledTrees(int(self.n_features[i]), float(self.denominator[i]),
                             float(self.offset[i]), int(self.depth[i]),
                             self.roots[self.tree_offsets[i]:self.tree_offsets[i + 1]],
                             *(getattr(self, name)[a:b] for name in NODE_FIELDS))

    def __len__(self) -> int:
        return len(self.ids)

    @functools.cached_property
    def steps(self) -> np.ndarray:
        """``steps[2 * node + goes_right]``: from a node to the child a row goes to; 0 at a
        leaf, which a walk then stays at. One gather a step instead of two and a choice."""
        steps = np.empty((len(self.left), 2), np.int32)
        steps[:, 0], steps[:, 1] = self.left, self.right
        return np.maximum(steps, 0, out=steps).ravel()

    def to_arrays(self, prefix: str = "trees_") -> dict[str, np.ndarray]:
        """Plain arrays for an npz shard (no objects: loads with ``allow_pickle=False``)."""
        ids = self.ids.to_pylist()
        arrays = {f"{prefix}ids": np.array(ids, dtype=f"U{max(map(len, ids), default=1)}")}
        for field in dataclasses.fields(self)[1:]:
            arrays[prefix + field.name] = getattr(self, field.name)
        return arrays

    @classmethod
    def from_arrays(cls, z, prefix: str = "trees_") -> Trees:
        """``to_arrays``'s inverse, from a dict or an open npz."""
        names = [field.name for field in dataclasses.fields(cls)[1:]]
        return cls(pa.array(z[f"{prefix}ids"].tolist(), pa.string()),
                   *(np.asarray(z[prefix + name]) for name in names))


def _offsets(counts) -> np.ndarray:
    return np.concatenate(([0], np.cumsum(np.asarray(counts, np.int64)))).astype(np.int64)


def _concat_offsets(parts: list[np.ndarray]) -> np.ndarray:
    shift = np.cumsum([0] + [p[-1] for p in parts[:-1]])
    return np.concatenate([[0]] + [p[1:] + k for p, k in zip(parts, shift, strict=True)])


# --- decisions --------------------------------------------------------------------------------


def decide_trees(trees: Trees, entries: np.ndarray, starts: np.ndarray, stops: np.ndarray,
                 X: np.ndarray) -> np.ndarray:
    """Decisions for rows of X: rows ``starts[i]:stops[i]`` by entry ``entries[i]``, which reads
    their first ``n_features`` columns. Rows no run covers, and rows not finite as float32 in a
    column their entry reads, are NaN."""
    X = np.asarray(X)
    X = X.reshape(-1, 1) if X.ndim == 1 else X
    out = np.full(len(X), np.nan)
    entries = np.asarray(entries, dtype=np.int64)
    if not len(entries):
        return out
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(stops, dtype=np.int64) - starts
    rows, entry = concat_ranges(starts, lengths), np.repeat(entries, lengths)
    width = int(trees.n_features[entries].max())
    if X.shape[1] < width:
        raise ValueError(f"rows of {X.shape[1]} columns for a model of {width} features")
    with np.errstate(over="ignore", invalid="ignore"):
        x = X[rows, :width].astype(np.float32).astype(np.float64)  # scikit-learn's input
    read = np.arange(width) < trees.n_features[entry][:, None]
    fine = (np.isfinite(x) | ~read).all(axis=1)
    rows, entry, x = rows[fine], entry[fine], np.ascontiguousarray(x[fine])
    per_row = int((trees.tree_offsets[entries + 1] - trees.tree_offsets[entries]).max())
    step = max(1, PAIRS_PER_CHUNK // max(1, per_row))
    depths = np.concatenate([np.zeros(0)] + [_path_lengths(trees, entry[i:i + step], x[i:i + step])
                                             for i in range(0, len(entry), step)])
    denominator = trees.denominator[entry]
    # As scikit-learn: a forest of one-sample trees has denominator 0 and score 1.
    scores = 2 ** (-np.divide(depths, denominator, out=np.ones_like(depths),
                              where=denominator != 0))
    out[rows] = -scores - trees.offset[entry]
    return out


def _path_lengths(trees: Trees, entry: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Each row's summed leaf values over its forest's trees, added in the forest's order."""
    counts = trees.tree_offsets[entry + 1] - trees.tree_offsets[entry]
    pair_row = np.repeat(np.arange(len(entry)), counts)
    position = concat_ranges(np.zeros_like(counts), counts)  # the pair's tree within its forest
    pair_entry = entry[pair_row]
    node = trees.offsets[pair_entry] + trees.roots[trees.tree_offsets[pair_entry] + position]
    depth = int(trees.depth[entry].max(initial=0))
    leaf = _walk(trees, node.astype(np.intp), pair_row * x.shape[1], x.ravel(), depth)
    most = int(counts.max(initial=0))
    if not most:
        return np.zeros(len(entry))
    # Tree k of every row in row k of the table (0 past a forest's last tree: adding 0.0 is
    # exact); a running sum down the table is scikit-learn's ``depths +=`` tree after tree.
    table = np.zeros((most, len(entry)))
    table[position, pair_row] = trees.value[leaf]
    return np.cumsum(table, axis=0)[-1]


def _walk(trees: Trees, node: np.ndarray, base: np.ndarray, flat: np.ndarray,
          depth: int) -> np.ndarray:
    """The leaf each (row, tree) pair reaches from its root: ``flat[base + column]`` is the
    pair's row's value in a column. ``depth`` steps down for every pair at once: a leaf steps
    to itself (its column 0 is read and ignored), which costs less than dropping the pairs
    that arrived."""
    steps = trees.steps
    for _ in range(depth):
        goes_right = flat[base + trees.feature[node]] > trees.threshold[node]  # not x <= t
        node += steps[2 * node + goes_right]
    return node
