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

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from services.api.static import StaticFilesWithHeaders

UI_PATH = "/ui"
UI_DIRECTORY = Path(__file__).parent / "ui"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)


# ``no-cache``: the browser revalidates each file on load (ETag), so a new release is
# never half old, half new.
DASHBOARD_HEADERS = {
    "cache-control": "no-cache",
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
}


def install_dashboard(app: FastAPI) -> None:
    """Serve ``/ui/`` (``index.html``) and its assets, no key needed (like ``/docs``);
    ``/``, where a browser pointed at the API lands, leads there."""

    @app.get("/", include_in_schema=False)
    async def to_dashboard() -> RedirectResponse:
        return RedirectResponse(f"{UI_PATH}/")

    app.mount(
        UI_PATH,
        StaticFilesWithHeaders(directory=UI_DIRECTORY, html=True, headers=DASHBOARD_HEADERS),
        name="dashboard",
    )
