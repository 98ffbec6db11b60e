"""The OneClassSVM pipeline's parameters (`fleetscore train --estimator ocsvm`, ``reference_model``).

Chosen by docs/sweep_defaults.py on the demo fleet (docs/benchmarks.md, "Model defaults"):
the best precision at full recall, and no window flagged in the middle of a sensor's normal
range. A larger gamma bends the boundary around the training points, so values between two
clusters of them (a daily cycle's two halves) come out anomalous. A module of its own so the
command line reads them without importing scikit-learn.
"""

DEFAULT_NU = 0.01
DEFAULT_GAMMA = 0.01
