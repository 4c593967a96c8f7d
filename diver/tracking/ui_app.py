"""``mlflow ui --app-name diver``: MLflow's own UI, opening experiments on their training runs.

Why this exists: MLflow 3.17's UI (and 3.18's) decides whether an experiment opens on
the *GenAI* view (traces, token usage, "Detect issues") or on *Model training* (the
runs table) from a switch it keeps per browser in ``localStorage`` under
``mlflow.workflowType_v1``, default GenAI.  The experiment's ``mlflow.experimentKind``
tag, which ``diver track init`` sets, is read only while a frontend feature flag is off,
and these releases hard-wire it on (``() => true``), so the switch decides: a
first-time user running plain ``mlflow ui`` on a study's store lands on the GenAI view
of a training study.

This app is MLflow's server unchanged but for one thing: the UI's page sets that
switch to Model training *when the browser has never chosen* (no stored value).  Once
the user flips the switch, their choice is stored and kept.  MLflow loads the app
through its ``mlflow.app`` entry point (``pyproject.toml``), the same mechanism as its
own ``basic-auth`` app, so every ``mlflow ui`` / ``mlflow server`` option still
applies.  ``diver where`` and ``diver track server`` start the UI with it.
"""

from __future__ import annotations

from typing import Any

#: MLflow's localStorage key of the GenAI / Model training switch (``key`` + ``_v`` +
#: version in its ``useLocalStorage``) and the value that means Model training.
WORKFLOW_KEY = "mlflow.workflowType_v1"
TRAINING_WORKFLOW = "machine_learning"
#: The app's name for ``--app-name``.
APP_NAME = "diver"

_KEY, _VALUE = repr(WORKFLOW_KEY), repr(TRAINING_WORKFLOW)  # JS string literals
DEFAULT_VIEW_SCRIPT = (
    f"<script>try{{if(localStorage.getItem({_KEY})===null)"
    f"localStorage.setItem({_KEY},JSON.stringify({_VALUE}))}}catch(e){{}}</script>"
)


def with_default_view(html: str) -> str:
    """``html`` (the UI's index page) with :data:`DEFAULT_VIEW_SCRIPT` first in its
    head, so it runs before MLflow's bundle reads the switch; unchanged if it has no
    ``<head>`` or already carries the script."""
    if DEFAULT_VIEW_SCRIPT in html or "<head>" not in html:
        return html
    return html.replace("<head>", "<head>" + DEFAULT_VIEW_SCRIPT, 1)


def _inject(response: Any) -> Any:
    """Flask ``after_request`` hook: the index page gets :func:`with_default_view`."""
    if response.status_code != 200 or response.mimetype != "text/html":
        return response
    response.direct_passthrough = False  # send_from_directory streams the file
    body = response.get_data(as_text=True)
    changed = with_default_view(body)
    if changed is not body:
        response.set_data(changed)
    return response


def create_app(app: Any = None) -> Any:
    """The ``mlflow.app`` factory: MLflow's Flask app with the hook, wrapped the way
    MLflow wraps its own apps (FastAPI under uvicorn, the default server)."""
    from mlflow.environment_variables import _MLFLOW_SGI_NAME
    from mlflow.server import app as mlflow_app

    flask_app = app if app is not None else mlflow_app
    if _inject not in flask_app.after_request_funcs.get(None, []):
        flask_app.after_request(_inject)
    if _MLFLOW_SGI_NAME.get() == "uvicorn":
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(flask_app)
    return flask_app
