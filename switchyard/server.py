"""The CLI's door to the server code (``switchyard worker``, ``switchyard db``).

The services live in the top-level packages ``shared`` and ``services`` beside this one,
installed with the ``server`` extra. Importing ``switchyard`` loads none of them; the
server commands load them here, on demand, so that:

- our ``shared`` and ``services`` are found even when the current directory holds a
  user's packages of the same names (they are looked up beside ``switchyard`` first);
- once loaded, they are set aside in ``sys.modules`` under private names, so the user's
  task modules, imported afterwards from the current directory, get *their* ``shared``
  and ``services``. Our modules keep working: their code holds its imports already
  (the server code imports nothing lazily; ``tests/unit/test_architecture.py`` keeps it so).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

SERVER_PACKAGES = ("shared", "services")
#: Where set-aside server modules live in sys.modules.
PRIVATE_PREFIX = "switchyard._server."
#: Set (to "1") in a worker whose server modules were set aside, for its child processes.
SET_ASIDE_ENV = "SWITCHYARD_SERVER_SET_ASIDE"
#: The directory that holds ``switchyard`` and, beside it, ``shared`` and ``services``.
HOME = str(Path(__file__).resolve().parent.parent)

SERVER_EXTRA_HINT = (
    "this command runs Switchyard's server code, which needs the server extra: "
    "pip install 'switchyard[server]'"
)


class ServerUnavailable(RuntimeError):
    """The server code or one of its dependencies is not installed."""


def _is_ours(module: ModuleType) -> bool:
    origin = getattr(module, "__file__", None) or ""
    return Path(origin).resolve().is_relative_to(HOME)


def import_server(name: str) -> ModuleType:
    """Import one of our server modules (``services.worker.__main__``), never a user's
    package that happens to share its top-level name."""
    for package in SERVER_PACKAGES:  # a user's package loaded earlier must not answer
        loaded = sys.modules.get(package)
        if loaded is not None and not _is_ours(loaded):
            raise ServerUnavailable(
                f"a package named {package!r} that is not Switchyard's is already imported "
                f"({getattr(loaded, '__file__', '?')}); run the `switchyard` command rather "
                "than importing it from your code"
            )
    saved = sys.path[:]
    here = {"", ".", os.getcwd()}
    sys.path[:] = [HOME, *(p for p in saved if p not in here and p != HOME)]
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in SERVER_PACKAGES:
            raise ServerUnavailable(
                f"Switchyard's server code is not installed: {SERVER_EXTRA_HINT}"
            ) from exc
        raise ServerUnavailable(f"{exc.name!r} is missing: {SERVER_EXTRA_HINT}") from exc
    finally:
        sys.path[:] = saved


def set_server_aside() -> None:
    """Move our loaded server modules out of the user's way (see the module docstring)."""
    os.environ[SET_ASIDE_ENV] = "1"
    for name in [n for n in sys.modules if n.split(".")[0] in SERVER_PACKAGES]:
        sys.modules[PRIVATE_PREFIX + name] = sys.modules.pop(name)


def put_user_directory_first() -> None:
    """``--tasks mypkg.tasks`` is looked up from the current directory, as ``python -m``
    would (the installed ``switchyard`` script does not put it on the path)."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
