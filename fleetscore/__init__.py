"""fleetscore: score many per-sensor anomaly-detection models every hour."""

__version__ = "0.1.0"
