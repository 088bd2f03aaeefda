"""``python -m services.api``: serve the API with uvicorn on SWITCHYARD_API_HOST/PORT."""

from __future__ import annotations

import logging
import sys

import uvicorn

from services.api.app import create_app
from shared.settings import get_settings


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = get_settings()
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_level="info",
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    server.run()
    # uvicorn exits quietly when startup fails (e.g. no API keys); say so in the code.
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
