"""The refit timer: starts the ``refit_models`` orchestration on the schedule of the app
setting FLEETSCORE_REFIT_SCHEDULE (an NCRONTAB expression, six fields, UTC).

The schedule is a binding expression, ``%FLEETSCORE_REFIT_SCHEDULE%``: "You can put the
schedule expression in an app setting and set this property to the app setting name wrapped in
% signs" (Timer trigger for Azure Functions, Configuration,
https://learn.microsoft.com/azure/azure-functions/functions-bindings-timer). An expression that
does not resolve fails the host's indexing of the function, even one disabled with
``AzureWebJobs.<name>.Disabled`` (azure-functions-host#10346), so function_app.py registers
this blueprint only when the setting is set: absent or empty, the refit is off and the app
has no refit timer at all.
"""

from __future__ import annotations

import logging

import azure.durable_functions as df
import azure.functions as func

from fleetscore import runtime
from orchestrators.names import REFIT_INSTANCE, REFIT_MODELS
from triggers import _ACTIVE, _start, _status

bp = df.Blueprint()
log = logging.getLogger("fleetscore.triggers")


@bp.timer_trigger(schedule="%FLEETSCORE_REFIT_SCHEDULE%", arg_name="timer", run_on_startup=False)
@bp.durable_client_input(client_name="client")
async def scheduled_refit(timer: func.TimerRequest, client) -> None:
    """One refit orchestration at a time (one instance id); the models lock guards against a
    refit started elsewhere (the CLI, another app on the same store)."""
    existing = await _status(client, REFIT_INSTANCE)
    if existing is not None and existing.runtime_status in _ACTIVE:
        log.info("the refit started earlier is still %s: not started again",
                 existing.runtime_status.value)
        return
    if not await _start(client, REFIT_INSTANCE, runtime.settings().refit_input(),
                        name=REFIT_MODELS):
        log.info("a refit was started by another starter at the same moment: not started again")
        return
    log.info("started the refit", extra={"past_due": timer.past_due})
