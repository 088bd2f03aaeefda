"""Keys out of the API's log lines: a WebSocket's key may travel in its URL
(``?token=``, what browsers can send), and uvicorn logs each handshake's path with its
query string on ``uvicorn.error`` (not the access log, which is off)."""

from __future__ import annotations

import logging
import re

_TOKEN = re.compile(r"(?i)((?:^|[?&])token=)[^&\s\"']*")


def without_keys(text: str) -> str:
    return _TOKEN.sub(r"\1[redacted]", text)


class RedactKeys(logging.Filter):
    """Rewrites a record's message and text arguments with every ``token=`` value
    replaced; the record is always kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = without_keys(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(without_keys(a) if isinstance(a, str) else a for a in record.args)
        return True


def redact_uvicorn_logs() -> None:
    """After uvicorn configured its loggers (``uvicorn.Config``)."""
    for name in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(RedactKeys())
