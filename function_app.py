"""The Functions app: wiring only. The logic lives in the fleetscore package."""

import azure.durable_functions as df
import azure.functions as func

import activities
import activities.refit
import orchestrators
import orchestrators.refit
import triggers
import triggers.refit
from fleetscore import telemetry
from fleetscore.settings import refit_schedule

telemetry.setup("fleetscore-functions")  # only with APPLICATIONINSIGHTS_CONNECTION_STRING
app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(orchestrators.bp)
app.register_functions(orchestrators.refit.bp)
app.register_functions(activities.bp)
app.register_functions(activities.refit.bp)
app.register_functions(triggers.bp)
if refit_schedule():  # off without FLEETSCORE_REFIT_SCHEDULE: no timer (see triggers/refit.py)
    app.register_functions(triggers.refit.bp)
