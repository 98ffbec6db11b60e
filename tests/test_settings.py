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
