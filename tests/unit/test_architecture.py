"""The layout's rules, checked on the source: where a job's status may be written, which
package may import which, and who may talk AMQP.

Each rule is a function over a source tree that returns its violations; the tests run
them on this repository and on a small tree that breaks each rule in every way listed
here (so a rule that can no longer see a violation fails too).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("shared", "services")  # what ships; bench/ and tests/ seed and poke rows
JOB_WING = "shared/jobs/"
STATEMENTS = "shared/jobs/sql.py"
TRANSITIONS = "shared/jobs/transitions.py"
MIGRATIONS = "shared/migrations/"
BROKER = "shared/broker/"

_JOBS = r'(?:ONLY\s+)?(?:"?\w+"?\.)?"?jobs"?(?![\w"])'
INSERT_JOBS = re.compile(rf"\b(?:INSERT|MERGE)\s+INTO\s+{_JOBS}", re.IGNORECASE)
UPDATE_JOBS = re.compile(
    rf"\bUPDATE\s+{_JOBS}(?:\s+(?:AS\s+)?(?!SET\b)\w+)?\s+SET\b", re.IGNORECASE
)
# In a SET list: ``status =``, ``"status" =``, ``(…, status, …) =``, or a hole (``{} =``)
# that could name any column.
ASSIGNS_STATUS = re.compile(
    r'(?<![.\w"])"?status"?\s*=|\([^()]*(?<![.\w"])"?status"?[^()]*\)\s*=|\{\}\s*=',
    re.IGNORECASE,
)
END_OF_SET = re.compile(r"\b(?:FROM|WHERE|RETURNING)\b|;", re.IGNORECASE)
# A function of the migrations that changes statuses (it unblocks children).
STATUS_FUNCTIONS = re.compile(r"\bswitchyard_unblock_children\b")


def _set_list(text: str, start: int) -> str:
    """The SET list that starts at ``start``: up to its FROM, WHERE or RETURNING at the
    top level (a subquery's FROM inside parentheses does not end it)."""
    depth = 0
    for i in range(start, len(text)):
        depth += (text[i] == "(") - (text[i] == ")")
        if depth == 0 and END_OF_SET.match(text, i) and not re.match(r"\w", text[i - 1]):
            return text[start:i]
    return text[start:]


def writes_status(text: str) -> bool:
    """SQL that inserts jobs, sets ``status`` in an UPDATE of jobs, or calls a function
    that changes statuses."""
    if INSERT_JOBS.search(text) or STATUS_FUNCTIONS.search(text):
        return True
    return any(ASSIGNS_STATUS.search(_set_list(text, m.end())) for m in UPDATE_JOBS.finditer(text))


def _sources(root: Path) -> Iterator[tuple[str, ast.Module]]:
    for top in SCANNED:
        for path in sorted((root / top).rglob("*.py")):
            yield path.relative_to(root).as_posix(), ast.parse(path.read_text(), str(path))


def _text(node: ast.AST) -> str | None:
    """The text of a string expression: a constant, an f-string (``{}`` for its holes) or
    a ``+`` of those; None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)  # type: ignore[misc]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _text(node.left), _text(node.right)
        if left is not None or right is not None:
            return (left or "{}") + (right or "{}")
    return None


def _strings(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Every outermost string expression of ``tree``, with its line."""
    inner: set[int] = set()
    for node in ast.walk(tree):  # breadth first: outer expressions come first
        if id(node) in inner:
            continue
        text = _text(node)
        if text is not None:
            inner.update(id(n) for n in ast.walk(node))
            yield node.lineno, text


def _imports(name: str, tree: ast.AST) -> Iterator[tuple[ast.AST, str, dict[str, str]]]:
    """(node, absolute module, {local name: what it names}) of each import; relative
    imports resolved against ``name``'s package."""
    package = name.removesuffix(".py").split("/")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node, a.name, {a.asname or a.name.split(".")[0]: a.name}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names = {a.asname or a.name: f"{module}.{a.name}" for a in node.names}
            yield node, module, names


def _is_orm_job(node: ast.AST) -> bool:
    return re.search(r"\bJob\b", ast.unparse(node)) is not None


def status_writes_outside_the_wing(root: Path) -> list[str]:
    """SQL that writes a status (or inserts jobs) anywhere but the statements module and
    the migrations; ORM writes of ``Job`` anywhere; ``.status`` assigned outside the
    wing in a module that knows the ORM ``Job``."""
    found = []
    for name, tree in _sources(root):
        if name != STATEMENTS and not name.startswith(MIGRATIONS):
            found += [
                (name, line, f"SQL writes jobs.status outside {STATEMENTS}")
                for line, text in _strings(tree)
                if writes_status(text)
            ]
        knows_job = any(
            target == "shared.models.Job" or target == "shared.models"
            for _, _, names in _imports(name, tree)
            for target in names.values()
        )
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = ast.unparse(node.func).split(".")[-1]
                if func.endswith(("update", "insert", "merge")) and node.args:
                    if _is_orm_job(node.args[0]):
                        found.append((name, node.lineno, f"ORM {func}(Job) writes jobs"))
                elif func == "Job" and not name.startswith(JOB_WING):
                    found.append((name, node.lineno, "builds an ORM Job outside the wing"))
            if knows_job and not name.startswith(JOB_WING):
                targets = (
                    node.targets
                    if isinstance(node, ast.Assign)
                    else [node.target]
                    if isinstance(node, ast.AugAssign | ast.AnnAssign)
                    else []
                )
                if any(isinstance(t, ast.Attribute) and t.attr == "status" for t in targets):
                    found.append((name, node.lineno, "assigns .status outside the wing"))
    return [f"{n}:{line}: {what}" for n, line, what in sorted(found)]


def _writer_statements(root: Path) -> set[str]:
    """The names in ``sql.py`` whose text writes a status, or that are built by (or
    from) one that does."""
    tree = ast.parse((root / STATEMENTS).read_text())
    writers: set[str] = set()
    for _ in range(3):  # a name built from a writer is one: follow a few levels
        for node in tree.body:
            names = (
                [t.id for t in node.targets if isinstance(t, ast.Name)]
                if isinstance(node, ast.Assign)
                else [node.name]
                if isinstance(node, ast.FunctionDef)
                else []
            )
            uses = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            if any(writes_status(t) for _, t in _strings(node)) or uses & writers:
                writers.update(names)
    return writers


def status_statements_run_outside_transitions(root: Path) -> list[str]:
    """The statements of ``sql.py`` that write a status, used by any module but
    ``transitions.py`` (the one writer), however ``sql`` was imported."""
    writers = _writer_statements(root)
    module = "shared.jobs.sql"
    found = []
    for name, tree in _sources(root):
        if name in (STATEMENTS, TRANSITIONS):
            continue
        aliases = set()
        for node, _, names in _imports(name, tree):
            for local, target in names.items():
                if target == module:
                    aliases.add(local)
                elif target.removeprefix(module + ".") in writers:
                    found.append((name, node.lineno, target.rsplit(".", 1)[1]))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and ast.unparse(node.value) in aliases | {module}
                and node.attr in writers
            ):
                found.append((name, node.lineno, node.attr))
    return [
        f"{n}:{line}: runs sql.{what} (only {TRANSITIONS} may)" for n, line, what in sorted(found)
    ]


def imports_across_packages(root: Path) -> list[str]:
    """A service importing another service, or ``shared`` importing a service."""
    found = []
    for name, tree in _sources(root):
        parts = name.split("/")
        own = parts[1] if parts[0] == "services" and len(parts) > 2 else None
        for node, module, _ in _imports(name, tree):
            bits = module.split(".")
            if bits[0] != "services" or len(bits) < 2:
                continue
            if parts[0] == "shared":
                found.append(f"{name}:{node.lineno}: shared imports {module}")
            elif own is not None and bits[1] != own:
                found.append(f"{name}:{node.lineno}: service {own!r} imports {module}")
    return sorted(found)


def aio_pika_outside_the_broker_module(root: Path) -> list[str]:
    return [
        f"{name}:{node.lineno}: imports {module} (only {BROKER} talks AMQP)"
        for name, tree in _sources(root)
        if not name.startswith(BROKER)
        for node, module, _ in _imports(name, tree)
        if module.split(".")[0] in ("aio_pika", "aiormq", "pamqp")
    ]


RULES = (
    status_writes_outside_the_wing,
    status_statements_run_outside_transitions,
    imports_across_packages,
    aio_pika_outside_the_broker_module,
)


def test_this_repository_keeps_every_rule() -> None:
    broken = [v for rule in RULES for v in rule(ROOT)]
    assert broken == []


def test_the_rules_see_the_real_writers() -> None:
    """Not vacuous here: sql.py's status writers are recognised, and transitions runs
    them."""
    writers = _writer_statements(ROOT)
    assert {"DISPATCH", "APPLY_SUCCESSES", "INSERT_ONE_WITH_AUDIT", "insert_jobs"} <= writers
    assert {"CLAIM_READY_HEADS", "SET_WAITING_REASONS", "LOCK_PARENTS"} & writers == set()
    assert "sql.DISPATCH" in (ROOT / TRANSITIONS).read_text()


SQL_WRITES = [
    "UPDATE jobs SET status = 'ready' WHERE id = $1",
    "UPDATE jobs AS j SET error = NULL, status = $2",
    "update public.jobs set status = 'x'",
    'UPDATE ONLY "jobs" j SET "status" = $1',
    "UPDATE jobs SET (status, error) = ('failed', 'x')",
    "UPDATE jobs SET error = (SELECT e FROM x LIMIT 1), status = 'failed' WHERE id = $1",
    "INSERT INTO public.jobs (id) VALUES ($1)",
    "MERGE INTO jobs USING x ON true WHEN MATCHED THEN DELETE",
    "SELECT * FROM switchyard_unblock_children($1)",
]
SQL_READS = [
    "UPDATE jobs j SET waiting_reason = r.reason FROM r WHERE j.id = r.id AND j.status = 'ready'",
    "UPDATE jobs SET progress = $2 WHERE id = $1 AND status IN ('running')",
    "SELECT status FROM jobs WHERE status = 'ready'",
    "UPDATE jobs_archive SET status = 'x'",
    "UPDATE workers SET state = 'dead'",
]


def test_what_counts_as_a_status_write() -> None:
    assert [t for t in SQL_WRITES if not writes_status(t)] == []
    assert [t for t in SQL_READS if writes_status(t)] == []


def _write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_each_rule_reports_a_tree_that_breaks_it(tmp_path: Path) -> None:
    _write(
        tmp_path,
        STATEMENTS,
        "def build():\n    return 'INSERT INTO jobs (id) VALUES ($1)'\n"
        "CANCEL = \"UPDATE jobs SET status = 'cancelled' WHERE id = $1\"\n"
        "INSERT_ONE = build()\n"
        'READ = "SELECT 1"\n',
    )
    _write(tmp_path, TRANSITIONS, "from shared.jobs import sql\nX = sql.CANCEL\n")
    _write(tmp_path, MIGRATIONS + "versions/0001.py", 'S = "INSERT INTO jobs VALUES (1)"\n')
    _write(tmp_path, BROKER + "__init__.py", "import aio_pika\n")
    _write(
        tmp_path,
        "services/api/routes.py",
        "from shared.jobs import sql as q\n"  # 1
        "from shared.jobs.sql import INSERT_ONE\n"  # 2
        "from services.scheduler.cycle import Scheduler\n"  # 3
        "import aio_pika.abc\n"  # 4
        "from shared.models import Job\n"  # 5
        "A = q.CANCEL\n"  # 6
        "B = q.READ\n"  # 7
        'C = f"UPDATE jobs j SET error = NULL, {column} = $2 WHERE id = $1"\n'  # 8
        'D = "UPDATE jobs SET error = $2, " + "status = $3"\n'  # 9
        "E = sa.update(Job.__table__).values(status='ready')\n"  # 10
        "session.add(models.Job(id=1))\n"  # 11
        "job.status = 'ready'\n",  # 12
    )
    _write(tmp_path, "services/worker/fine.py", "from . import runner\nrow.status = 'x'\n")
    _write(tmp_path, "services/logger/rel.py", "from ..api import app\n")
    _write(tmp_path, "shared/helpers.py", "import services.worker.worker\n")
    where = "services/api/routes.py"
    assert status_writes_outside_the_wing(tmp_path) == [
        f"{where}:8: SQL writes jobs.status outside shared/jobs/sql.py",
        f"{where}:9: SQL writes jobs.status outside shared/jobs/sql.py",
        f"{where}:10: ORM update(Job) writes jobs",
        f"{where}:11: builds an ORM Job outside the wing",
        f"{where}:12: assigns .status outside the wing",
    ]
    assert status_statements_run_outside_transitions(tmp_path) == [
        f"{where}:2: runs sql.INSERT_ONE (only shared/jobs/transitions.py may)",
        f"{where}:6: runs sql.CANCEL (only shared/jobs/transitions.py may)",
    ]
    assert imports_across_packages(tmp_path) == [
        "services/api/routes.py:3: service 'api' imports services.scheduler.cycle",
        "services/logger/rel.py:1: service 'logger' imports services.api",
        "shared/helpers.py:1: shared imports services.worker.worker",
    ]
    assert aio_pika_outside_the_broker_module(tmp_path) == [
        f"{where}:4: imports aio_pika.abc (only shared/broker/ talks AMQP)"
    ]
