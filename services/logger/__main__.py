"""``python -m services.logger``: write log lines and execution history in batches."""

from __future__ import annotations

import sys

from services.logger.logger import HistoryLogger
from shared.service import run_service, service_parser


def main(argv: list[str]) -> int:
    service_parser(
        "logger",
        "writes the log lines and attempt reports workers publish into the database, in batches.",
    ).parse_args(argv)
    return run_service("logger", lambda settings, stop: HistoryLogger(settings).run(stop))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
