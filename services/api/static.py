"""Files the API serves itself (the docs' assets, the dashboard), with headers of their own."""

from __future__ import annotations

from os import PathLike
from typing import Any

from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope


class StaticFilesWithHeaders(StaticFiles):
    """StaticFiles (ETag, Last-Modified, 304) that adds ``headers`` to every file."""

    def __init__(self, *, headers: dict[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.headers = headers

    def file_response(
        self,
        full_path: str | PathLike[str],
        stat_result: Any,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(self.headers)
        return response
