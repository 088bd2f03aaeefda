"""Every code block of README.md and docs/tasks.md, run as a reader would, in order,
against a real stack (examples drift otherwise).

How a block runs (an HTML comment right above it may say otherwise):

- ``bash``: as a script (``set -euo pipefail``) that must exit 0. The documented API
  address becomes this test's API, ``.venv/bin/`` this venv's, ``<id>`` the first job id
  an earlier block printed; ``SY``, ``AUTH``, ``SWITCHYARD_URL`` and
  ``SWITCHYARD_API_KEY`` are set as the docs assume.
- ``python``: a file when its first line names one (``# mypkg/tasks.py``: written into
  the reader's directory, then imported), else a script run there that must exit 0.
- ``<!-- doc-test: background expect=TEXT -->``: a command that runs until stopped (a
  worker, a live stream); it runs beside the later blocks and must have printed TEXT
  by the end.
- ``<!-- doc-test: make-dry-run -->``: ``make`` lines run as ``make -n`` (the whole
  suite cannot run inside itself); each target must exist.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.e2e.conftest import free_port, wait_http_ok

pytestmark = pytest.mark.e2e

DOC_ADDRESS = re.compile(r"\b(?:127\.0\.0\.1|localhost):8000\b")
JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
FENCE = re.compile(
    r"(?:<!-- doc-test: (?P<directive>[^>]*?) -->\n)?```(?P<lang>\w+)\n(?P<code>.*?)\n```",
    re.S,
)
BIN = Path(sys.executable).parent
ADMIN = "s3cret"  # the key the docs use
KEYS = f"{ADMIN}:admin,r3ader:viewer"


@dataclass
class Block:
    path: str
    line: int
    lang: str
    code: str
    directive: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line} ({self.lang})"


def blocks(relative: str) -> list[Block]:
    text = (ROOT / relative).read_text()
    return [
        Block(
            relative,
            text.count("\n", 0, m.start("code")),
            m["lang"],
            m["code"],
            (m["directive"] or "").strip(),
        )
        for m in FENCE.finditer(text)
    ]


@dataclass
class Reader:
    """The reader's terminal: a directory, an environment, the ids seen so far."""

    home: Path
    address: str  # host:port of this test's API
    env: dict[str, str]
    last_id: str | None = None
    background: list[tuple[Block, subprocess.Popen[str], Path, str]] = field(default_factory=list)

    def prepare(self, code: str) -> str:
        code = DOC_ADDRESS.sub(self.address, code).replace(".venv/bin/", f"{BIN}/")
        if "<id>" in code:
            assert self.last_id, "a block uses <id> before any block printed a job id"
            code = code.replace("<id>", self.last_id)
        return code

    def run(self, block: Block) -> None:
        code = self.prepare(block.code)
        directive = block.directive
        if block.lang == "python":
            first = code.splitlines()[0]
            if re.fullmatch(r"# [\w/]+\.py", first):
                self.write_module(first[2:], code)
                return
            self.check(block, [sys.executable, "-c", code])
        elif block.lang == "bash":
            if directive == "make-dry-run":
                code = re.sub(r"^make ", f"make -C {ROOT} -n ", code, flags=re.M)
            if directive.startswith("background"):
                self.start(block, code, directive.partition("expect=")[2])
            else:
                self.check(block, ["bash", "-c", "set -euo pipefail\n" + code])
        else:
            raise AssertionError(f"{block}: no way to run a {block.lang} block")

    def write_module(self, relative: str, code: str) -> None:
        path = self.home / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(code)
        module = relative.removesuffix(".py").replace("/", ".")
        self.check_command([sys.executable, "-c", f"import {module}"], f"import {module}")

    def check(self, block: Block, command: list[str]) -> None:
        out = self.check_command(command, str(block))
        if found := JOB_ID.findall(out):
            self.last_id = found[0]

    def check_command(self, command: list[str], what: str) -> str:
        done = subprocess.run(
            command, cwd=self.home, env=self.env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, (
            f"{what} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
        return done.stdout

    def start(self, block: Block, code: str, expect: str) -> None:
        log = self.home / f"background-{len(self.background)}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                ["bash", "-c", code],
                cwd=self.home,
                env=self.env,
                stdin=subprocess.PIPE,  # kept open: an interactive client waits on it
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,  # stopped as a group: bash and what it started
            )
        self.background.append((block, proc, log, expect))
        if "worker" in code:  # later blocks submit to it: wait until it serves
            self.wait_output(block, proc, log, "ready:")

    def wait_output(
        self, block: Block, proc: subprocess.Popen[str], log: Path, text: str, timeout: float = 30
    ) -> None:
        deadline = time.monotonic() + timeout
        while text not in log.read_text(errors="replace"):
            assert proc.poll() is None or text in log.read_text(), (
                f"{block} exited {proc.returncode}:\n{log.read_text()}"
            )
            assert time.monotonic() < deadline, (
                f"{block}: no {text!r} in {timeout}s:\n{log.read_text()}"
            )
            time.sleep(0.1)

    def finish(self) -> None:
        try:
            for block, proc, log, expect in self.background:
                if expect:
                    self.wait_output(block, proc, log, expect)
        finally:
            for _, proc, _, _ in self.background:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                if proc.stdin:
                    proc.stdin.close()


@pytest.mark.parametrize(
    "doc, dev",
    [("README.md", True), ("docs/tasks.md", False)],
    ids=["README.md", "docs-tasks.md"],
)
def test_every_code_block_runs(
    doc: str, dev: bool, start_service: object, service_env: dict[str, str], tmp_path: Path
) -> None:
    # README's tour runs against `make run` (dev mode, no key); docs/tasks.md with keys.
    server = {"SWITCHYARD_API_KEYS": "" if dev else KEYS, "SWITCHYARD_DEV": "1" if dev else "0"}
    port = free_port()
    api = start_service("api", env={**server, "SWITCHYARD_API_PORT": str(port)})  # type: ignore[operator]
    url = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{url}/healthz", api)
    for name in ("scheduler", "logger"):
        start_service(name, env=server)  # type: ignore[operator]
    if dev:  # `make run` starts a worker; docs/tasks.md starts its own
        start_service("worker", env=server)  # type: ignore[operator]
    home = tmp_path / "reader"
    home.mkdir()
    env = {
        **{k: v for k, v in service_env.items() if k != "SWITCHYARD_API_KEYS"},
        **server,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PYTHONPATH": str(home),
        "SY": url,
        "SWITCHYARD_URL": url,
        "AUTH": f"Authorization: Bearer {ADMIN}" if not dev else "X-No-Key: dev",
        "SWITCHYARD_API_KEY": "" if dev else ADMIN,
    }
    reader = Reader(home=home, address=f"127.0.0.1:{port}", env=env)
    found = blocks(doc)
    assert found, f"no code blocks in {doc}"
    try:
        for block in found:
            reader.run(block)
    finally:
        reader.finish()
