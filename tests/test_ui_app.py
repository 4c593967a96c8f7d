"""``mlflow ui --app-name diver`` (diver.tracking.ui_app): MLflow's own app, whose page
starts a browser that never chose on the *Model training* view.

The browser side (a fresh Chromium profile opening the experiment on its training runs)
is in test_mlflow_ui.py, on a finished default run.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import mlflow.server
import pytest

from diver.tracking import ui_app
from diver.tracking.server import server_command
from diver.tracking.ui_app import DEFAULT_VIEW_SCRIPT, WORKFLOW_KEY, with_default_view

INDEX = Path(mlflow.server.__file__).parent / "js" / "build" / "index.html"


def test_mlflow_finds_the_app_by_name() -> None:
    (entry,) = [e for e in entry_points(group="mlflow.app") if e.name == "diver"]
    assert entry.load() is ui_app.create_app


def test_the_script_goes_first_in_the_head_once_and_only_sets_an_unset_switch() -> None:
    html = INDEX.read_text()
    changed = with_default_view(html)
    assert changed.startswith(html[: html.index("<head>") + 6] + DEFAULT_VIEW_SCRIPT)
    assert changed.replace(DEFAULT_VIEW_SCRIPT, "") == html
    assert with_default_view(changed) == changed
    assert with_default_view("no head here") == "no head here"
    # MLflow's bundle reads the switch from this key (useLocalStorage: key + _v + version)
    bundle = "".join(p.read_text() for p in INDEX.parent.glob("static/js/main.*.js"))
    assert 'key:"mlflow.workflowType",version:1' in bundle and "`${e}_v${t}`" in bundle
    assert WORKFLOW_KEY == "mlflow.workflowType_v1"
    assert f"localStorage.getItem('{WORKFLOW_KEY}')===null" in DEFAULT_VIEW_SCRIPT


def test_the_flask_app_serves_the_page_with_the_script(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("_MLFLOW_SGI_NAME", raising=False)
    app = ui_app.create_app()
    assert app is mlflow.server.app and ui_app.create_app() is app  # one hook, not two
    assert app.after_request_funcs[None].count(ui_app._inject) == 1
    response = app.test_client().get("/")
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert DEFAULT_VIEW_SCRIPT in body and int(response.headers["Content-Length"]) == len(
        body.encode()
    )
    static = app.test_client().get("/static-files/favicon.ico")
    assert static.status_code == 200 and DEFAULT_VIEW_SCRIPT.encode() not in static.data


def test_the_tracking_server_runs_the_app_unless_it_needs_basic_auth(tmp_path: Path) -> None:
    plain = server_command(tmp_path, "127.0.0.1", 5000, 1, [], auth=False)
    assert plain[plain.index("--app-name") + 1] == "diver"
    auth = server_command(tmp_path, "127.0.0.1", 5000, 1, [], auth=True)
    assert auth[auth.index("--app-name") + 1] == "basic-auth"
