"""``/ui/``: the web dashboard, static files served by the API itself.

The dashboard (``services/api/ui/``: plain ES modules, no build step, nothing from
the internet) is a client of the public REST and WebSocket API like any other: the page
and its assets hold no data and need no key, and every datum it shows comes from a
request made with the key the user gave (kept in the tab's ``sessionStorage``). See
``docs/dashboard.md``.

The files are sent with a Content-Security-Policy that allows only this origin (and
its WebSocket), so that a page that tried to load anything from elsewhere would fail in
the browser as it does in the tests, and with no referrer, so that a ``?token=`` of the
first load never leaves in a Referer header.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

UI_PATH = "/ui"
UI_DIRECTORY = Path(__file__).parent / "ui"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)


class DashboardFiles(StaticFiles):
    """StaticFiles (ETag, 304) with the dashboard's headers. ``no-cache``: the browser
    revalidates each file on load, so a new release is never half old, half new."""

    def file_response(
        self,
        full_path: str | PathLike[str],
        stat_result: Any,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["cache-control"] = "no-cache"
        response.headers["content-security-policy"] = CONTENT_SECURITY_POLICY
        response.headers["referrer-policy"] = "no-referrer"
        response.headers["x-content-type-options"] = "nosniff"
        return response


def install_dashboard(app: FastAPI) -> None:
    """Serve ``/ui/`` (``index.html``) and its assets, no key needed (like ``/docs``)."""
    app.mount(UI_PATH, DashboardFiles(directory=UI_DIRECTORY, html=True), name="dashboard")
