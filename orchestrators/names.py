"""Function names shared by the orchestrators, the activities and the starters."""

SCORE_WINDOW = "score_window"
SCORE_UNITS = "score_units"
PLAN = "plan_window"
SUBMIT = "submit_units"
STATUS = "unit_status"
FINALIZE = "finalize_window"


def instance_id(window: str) -> str:
    """``score-YYYYMMDDTHH``: one orchestration per hour, so the hour is a singleton."""
    return "score-" + window.replace("-", "")

# The scheduled refit: one orchestration at a time, under one instance id.
REFIT_MODELS = "refit_models"
REFIT_BEGIN = "refit_begin"
REFIT_SUBMIT = "refit_submit"
REFIT_STATUS = "refit_status"
REFIT_FINISH = "refit_finish"
REFIT_INSTANCE = "refit"
