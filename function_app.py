"""The Functions app: wiring only. The logic lives in the fleetscore package."""

import azure.durable_functions as df
import azure.functions as func

import activities
import orchestrators
import triggers
from fleetscore import telemetry

telemetry.setup("fleetscore-functions")  # only with APPLICATIONINSIGHTS_CONNECTION_STRING
app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(orchestrators.bp)
app.register_functions(activities.bp)
app.register_functions(triggers.bp)
