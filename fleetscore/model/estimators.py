"""The estimators ``fleetscore train`` fits, by name.

``ocsvm``: Pipeline(StandardScaler, OneClassSVM(nu, gamma)), the reference architecture's
model. ``iforest``: IsolationForest(contamination=0.01), one random_state for every sensor so
that training the same points again gives the same model (and the same bank entry). Both are
compiled into the bank (model/bank.py, model/forest.py).
"""

from __future__ import annotations

from typing import Any

from fleetscore.core.defaults import DEFAULT_GAMMA, DEFAULT_NU

NAMES = ("ocsvm", "iforest")
# Chosen by backtest (docs/benchmarks.md, "The default detector, by backtest"): fewer flags,
# a less extreme worst sensor and more of its flags inside labelled windows than the ocsvm.
DEFAULT = "iforest"
FOREST_CONTAMINATION = 0.01  # the share the labelled history supported (issue 24)
FOREST_SEED = 0


def make_default() -> Any:
    """A new, unfitted estimator of the default kind, with its default parameters."""
    return make(DEFAULT)


def make(name: str, **params: Any) -> Any:
    """A new, unfitted estimator ``name`` with ``params`` (ocsvm: nu, gamma; iforest:
    IsolationForest's own, over the defaults above). ValueError for an unknown name."""
    if name == "ocsvm":
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import OneClassSVM

        nu, gamma = params.pop("nu", DEFAULT_NU), params.pop("gamma", DEFAULT_GAMMA)
        if params:
            raise ValueError(f"ocsvm takes nu and gamma, not {', '.join(sorted(params))}")
        return Pipeline([("scaler", StandardScaler()),
                         ("ocsvm", OneClassSVM(nu=nu, gamma=gamma))])
    if name == "iforest":
        from sklearn.ensemble import IsolationForest

        return IsolationForest(**{"contamination": FOREST_CONTAMINATION,
                                  "random_state": FOREST_SEED, **params})
    raise ValueError(f"unknown estimator {name!r}: expected one of {', '.join(NAMES)}")
