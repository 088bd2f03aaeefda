"""The layout's rules, checked on the source: where a job's status may be written, which
service may import which, and who may talk AMQP.

Each rule is a function over a source tree that returns its violations; the tests run
them on this repository and on a small tree that breaks each rule once (so a rule that
can no longer see a violation fails too).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("shared", "services")  # what ships; bench/ and tests/ seed and poke rows
JOB_WING = "shared/jobs"
STATEMENTS = "shared/jobs/sql.py"
TRANSITIONS = "shared/jobs/transitions.py"
MIGRATIONS = "shared/migrations"
MESSAGING = "shared/messaging.py"

INSERT_JOBS = re.compile(r"\bINSERT\s+INTO\s+jobs\b", re.IGNORECASE)
# The SET list of an UPDATE of jobs (up to its FROM, WHERE or RETURNING).
UPDATE_JOBS_SET = re.compile(
    r"\bUPDATE\s+jobs\b(?:\s+(?!SET\b)\w+)?\s+SET\b(.*?)(?:\bFROM\b|\bWHERE\b|\bRETURNING\b|$)",
    re.IGNORECASE | re.DOTALL,
)
ASSIGNS_STATUS = re.compile(r"(?<![.\w])status\s*=", re.IGNORECASE)


def writes_status(text: str) -> bool:
    """SQL that inserts jobs or sets ``status`` in an UPDATE of jobs."""
    return bool(INSERT_JOBS.search(text)) or any(
        ASSIGNS_STATUS.search(m.group(1)) for m in UPDATE_JOBS_SET.finditer(text)
    )


def _sources(root: Path) -> Iterator[tuple[str, ast.Module]]:
    for top in SCANNED:
        for path in sorted((root / top).rglob("*.py")):
            yield path.relative_to(root).as_posix(), ast.parse(path.read_text(), str(path))


def _strings(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Every string constant, and every f-string's literal text joined (``{}`` for the
    holes), with its line."""
    parts = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts.update(id(v) for v in node.values)
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            yield node.lineno, str(text)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in parts:
                yield node.lineno, node.value


def status_writes_outside_the_wing(root: Path) -> list[str]:
    """SQL that writes ``jobs.status`` (or inserts jobs) anywhere but the statements
    module and the migrations; ORM writes of ``Job`` anywhere, ORM ``Job`` rows built
    outside the wing."""
    found = []
    for name, tree in _sources(root):
        if name == STATEMENTS or name.startswith(MIGRATIONS):
            continue
        for line, text in _strings(tree):
            if writes_status(text):
                found.append(f"{name}:{line}: SQL writes jobs.status outside {STATEMENTS}")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("update", "insert")
                and node.args
                and isinstance(node.args[0], ast.Name)
                and node.args[0].id == "Job"
            ):
                found.append(f"{name}:{node.lineno}: ORM {node.func.id}(Job) writes jobs")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "Job"
                and not name.startswith(JOB_WING)
            ):
                found.append(f"{name}:{node.lineno}: builds an ORM Job outside the wing")
    return sorted(found, key=lambda v: (v.split(":")[0], int(v.split(":")[1])))


def status_statements_run_outside_transitions(root: Path) -> list[str]:
    """The statements of ``sql.py`` that write a status, used by any module but
    ``transitions.py`` (the one writer)."""
    tree = ast.parse((root / STATEMENTS).read_text())
    writers = set()
    for node in tree.body:
        names = []
        if isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.FunctionDef):
            names = [node.name]
        if any(writes_status(text) for _, text in _strings(node)):
            writers.update(names)
    found = []
    for name, module in _sources(root):
        if name in (STATEMENTS, TRANSITIONS):
            continue
        for node in ast.walk(module):
            used = None
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "sql"
            ):
                used = node.attr
            elif isinstance(node, ast.ImportFrom) and node.module == "shared.jobs.sql":
                used = next((a.name for a in node.names if a.name in writers), None)
            if used in writers:
                found.append(f"{name}:{node.lineno}: runs sql.{used} (only {TRANSITIONS} may)")
    return found


def _imports(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def services_importing_each_other(root: Path) -> list[str]:
    found = []
    for name, tree in _sources(root):
        parts = name.split("/")
        if parts[0] != "services" or len(parts) < 3:
            continue
        own = parts[1]
        for line, module in _imports(tree):
            bits = module.split(".")
            if bits[0] == "services" and len(bits) > 1 and bits[1] != own:
                found.append(f"{name}:{line}: service {own!r} imports {module}")
    return found


def aio_pika_outside_messaging(root: Path) -> list[str]:
    return [
        f"{name}:{line}: imports {module} (only {MESSAGING} talks AMQP)"
        for name, tree in _sources(root)
        if name != MESSAGING
        for line, module in _imports(tree)
        if module.split(".")[0] in ("aio_pika", "aiormq", "pamqp")
    ]


RULES = (
    status_writes_outside_the_wing,
    status_statements_run_outside_transitions,
    services_importing_each_other,
    aio_pika_outside_messaging,
)


def test_this_repository_keeps_every_rule() -> None:
    broken = [v for rule in RULES for v in rule(ROOT)]
    assert broken == []


def test_the_wing_writes_statuses_and_the_checks_see_them() -> None:
    """The rules are not vacuous here: sql.py has status writers, transitions runs them."""
    tree = ast.parse((ROOT / STATEMENTS).read_text())
    assert sum(writes_status(t) for _, t in _strings(tree)) >= 8
    assert "sql.DISPATCH" in (ROOT / TRANSITIONS).read_text()


def _write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_each_rule_reports_a_tree_that_breaks_it(tmp_path: Path) -> None:
    _write(
        tmp_path,
        STATEMENTS,
        'CANCEL = "UPDATE jobs SET status = \'cancelled\' WHERE id = $1"\nREAD = "SELECT 1"\n',
    )
    _write(tmp_path, TRANSITIONS, "from shared.jobs import sql\nX = sql.CANCEL\n")
    _write(tmp_path, MIGRATIONS + "/versions/0001.py", 'S = "INSERT INTO jobs VALUES (1)"\n')
    _write(tmp_path, MESSAGING, "import aio_pika\n")
    _write(
        tmp_path,
        "services/api/routes.py",
        "from shared.jobs import sql\n"
        "from services.scheduler.cycle import Scheduler\n"
        "import aio_pika.abc\n"
        "A = sql.CANCEL\n"
        "B = sql.READY\n"
        'C = f"UPDATE jobs j SET error = NULL, status = {new} WHERE id = $1"\n'
        'D = "INSERT INTO jobs (id) VALUES ($1)"\n'
        "E = update(Job).values(status='ready')\n"
        "session.add(Job(id=1, status='ready'))\n",
    )
    _write(tmp_path, "services/worker/fine.py", "from services.worker import runner\n")
    assert status_writes_outside_the_wing(tmp_path) == [
        "services/api/routes.py:6: SQL writes jobs.status outside shared/jobs/sql.py",
        "services/api/routes.py:7: SQL writes jobs.status outside shared/jobs/sql.py",
        "services/api/routes.py:8: ORM update(Job) writes jobs",
        "services/api/routes.py:9: builds an ORM Job outside the wing",
    ]
    assert status_statements_run_outside_transitions(tmp_path) == [
        "services/api/routes.py:4: runs sql.CANCEL (only shared/jobs/transitions.py may)"
    ]
    assert services_importing_each_other(tmp_path) == [
        "services/api/routes.py:2: service 'api' imports services.scheduler.cycle"
    ]
    assert aio_pika_outside_messaging(tmp_path) == [
        "services/api/routes.py:3: imports aio_pika.abc (only shared/messaging.py talks AMQP)"
    ]
