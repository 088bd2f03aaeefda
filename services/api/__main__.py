"""``python -m services.api``: serve the API with uvicorn on SWITCHYARD_API_HOST/PORT."""

from __future__ import annotations

import asyncio
import logging
import sys

import uvicorn
from sqlalchemy.exc import SQLAlchemyError

from services.api.app import create_app, preflight
from services.api.connections import HttpProtocol, WebSocketProtocol
from services.api.redact import redact_uvicorn_logs
from shared.errors import ConfigError
from shared.service import service_parser, tune_gc
from shared.settings import get_settings


def main(argv: list[str]) -> int:
    service_parser(
        "api",
        "the HTTP and WebSocket API (jobs, schedules, workers, keys), served by uvicorn on "
        "SWITCHYARD_API_HOST:SWITCHYARD_API_PORT; it checks the database before it listens.",
    ).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = get_settings()
        asyncio.run(preflight(settings))
    except ConfigError as exc:
        print(f"switchyard api: cannot start: {exc}", file=sys.stderr)
        return 2
    except (OSError, SQLAlchemyError) as exc:
        print(f"switchyard api: cannot reach the database: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_level="info",
        access_log=False,
        lifespan="on",
        http=HttpProtocol,
        ws=WebSocketProtocol,
    )
    redact_uvicorn_logs()  # after uvicorn.Config: it configures its loggers
    server = uvicorn.Server(config)
    tune_gc()
    server.run()
    # uvicorn exits quietly when startup fails (e.g. no API keys); say so in the code.
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
