"""Settings read once from the environment: a bad value is a usage error naming the setting."""

from __future__ import annotations

import pytest

from fleetscore.errors import UsageError
from fleetscore.settings import Settings


def test_the_error_threshold_setting():
    assert Settings.from_env({}).max_failed_percent is None
    assert Settings.from_env({"FLEETSCORE_MAX_FAILED_PERCENT": "12.5"}).max_failed_percent == 12.5
    for bad in ("ten", "-1", "101"):
        with pytest.raises(UsageError, match=f"FLEETSCORE_MAX_FAILED_PERCENT='{bad}' is not a "
                                             "percentage between 0 and 100"):
            Settings.from_env({"FLEETSCORE_MAX_FAILED_PERCENT": bad})


def test_the_refit_settings():
    off = Settings.from_env({})
    assert off.refit_schedule is None and off.refit_review is False
    assert Settings.from_env({"FLEETSCORE_REFIT_SCHEDULE": "  "}).refit_schedule is None
    on = Settings.from_env({"FLEETSCORE_REFIT_SCHEDULE": "0 30 2 * * *",
                            "FLEETSCORE_REFIT_MAX_ANOMALY_RATE": "0.05",
                            "FLEETSCORE_BACKEND": "batch", "FLEETSCORE_BATCH_MAX_NODES": "3"})
    assert on.refit_schedule == "0 30 2 * * *"
    request = on.refit_input()
    assert request["options"]["max_anomaly_rate"] == 0.05 and request["max_groups"] == 6
    for bad in ("high", "1.5"):
        with pytest.raises(UsageError, match=f"FLEETSCORE_REFIT_MIN_AGREEMENT='{bad}' is not a "
                                             "share between 0 and 1"):
            Settings.from_env({"FLEETSCORE_REFIT_MIN_AGREEMENT": bad})
