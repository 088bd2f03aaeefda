"""The entry of a worker's process-pool child (``services/worker/process_pool.py``).

It lives here, in ``switchyard``, because a child starts from the module *names* it is
given, with the user's directory first on the path: a name in ``services`` could be
the user's own package. Imported by the pool's forkserver before the task modules, it
loads the child's code through :mod:`switchyard.server` (and sets it aside again when
the worker did, so the task modules get the user's ``shared`` and ``services``).
"""

from __future__ import annotations

import os
from multiprocessing.connection import Connection

from switchyard import server

_child = server.import_server("services.worker.child")
if os.environ.get(server.SET_ASIDE_ENV):
    server.set_server_aside()


def main(modules: list[str], demo: bool, inbox: Connection, outbox: Connection) -> None:
    _child.child_main(modules, demo, inbox, outbox)
