"""A user's task module, loaded by a worker with ``--tasks tests.e2e.sample_tasks``."""

from __future__ import annotations

from pydantic import BaseModel

from shared.tasks import TaskContext, TaskRegistry

registry = TaskRegistry()


class Greeting(BaseModel):
    name: str
    times: int = 1


@registry.task("sample.greet", cpu_units=0.5, memory_mb=64, timeout_seconds=10)
def greet(ctx: TaskContext, params: Greeting) -> dict[str, str]:
    """Say hello ``times`` times."""
    for i in range(params.times):
        ctx.log.info("hello %s (%d)", params.name, i + 1)
        ctx.progress(i + 1, params.times)
    return {"greeting": f"hello {params.name}"}


class Size(BaseModel):
    chars: int


# What os.listdir returns for a file name that is not valid UTF-8 (surrogateescape).
UNDECODABLE_NAME = b"report-\xff.txt".decode("utf-8", "surrogateescape")


@registry.task("sample.bad_text", max_attempts=1)
def bad_text(ctx: TaskContext, payload: dict[str, object]) -> None:
    """Logs and raises text no UTF-8 encoder takes (lone surrogates)."""
    ctx.log.info("opening %s", UNDECODABLE_NAME)
    raise OSError(f"cannot open {UNDECODABLE_NAME}")


@registry.task("sample.big_result", max_attempts=1)
def big_result(ctx: TaskContext, params: Size) -> str:
    """Returns a string of ``chars`` characters."""
    return "x" * params.chars


class Count(BaseModel):
    count: int


@registry.task("sample.many_zeros", max_attempts=1)
def many_zeros(ctx: TaskContext, params: Count) -> list[int]:
    """Returns ``count`` zeros: two bytes each encoded ("0,")."""
    return [0] * params.count


# Process isolation (tests/e2e/test_isolation.py): tasks a thread could not be stopped
# from, or that would take the worker down with them.


@registry.task("sample.runaway", isolation="process", max_attempts=1)
def runaway(ctx: TaskContext, payload: dict[str, object]) -> None:
    """Spins forever and never looks at its cancel flag."""
    n = 0
    while True:
        n += 1


class Hog(BaseModel):
    mb: int
    step_mb: int = 16


@registry.task("sample.hog", isolation="process", memory_mb=64, max_attempts=2,
               initial_delay_seconds=0.1)  # fmt: skip
def hog(ctx: TaskContext, params: Hog) -> dict[str, int]:
    """Allocates ``mb`` MB (touched, so resident) in steps, then returns."""
    import time

    held = []
    for _ in range(params.mb // params.step_mb):
        held.append(bytearray(b"x" * (params.step_mb * 2**20)))
        time.sleep(0.02)
    return {"held_mb": len(held) * params.step_mb}


class Steps(BaseModel):
    steps: int
    seconds: float = 0.0


@registry.task("sample.leaves_a_thread", isolation="process", max_attempts=1)
def leaves_a_thread(ctx: TaskContext, params: Steps) -> None:
    """Returns at once, leaving a thread that logs and reports ``steps`` more times."""
    import threading
    import time

    def go_on() -> None:
        for i in range(params.steps):
            time.sleep(params.seconds)
            ctx.log.info("late line %d of job %s", i + 1, ctx.job_id)
            ctx.progress(i + 1, params.steps * 10)

    threading.Thread(target=go_on, daemon=True).start()
    ctx.log.info("returning")


@registry.task("sample.steps_in_child", isolation="process", max_attempts=1)
def steps_in_child(ctx: TaskContext, params: Steps) -> None:
    """Logs and reports each of ``steps`` steps, ``seconds`` apart, the last just
    before it returns."""
    import time

    for i in range(params.steps):
        time.sleep(params.seconds)
        ctx.log.info("step %d of %d", i + 1, params.steps)
        ctx.progress(i + 1, params.steps)


class Crash(BaseModel):
    how: str  # "segfault" or "exit"


@registry.task("sample.crash", isolation="process", max_attempts=1)
def crash(ctx: TaskContext, params: Crash) -> None:
    """Takes its own process down: a segfault, or os._exit(3)."""
    import ctypes
    import os

    ctx.log.info("about to %s", params.how)
    if params.how == "segfault":
        ctypes.string_at(0)
    os._exit(3)


class Work(BaseModel):
    loops: int


@registry.task("sample.count", cpu_units=1, memory_mb=64, max_attempts=1)
def count(ctx: TaskContext, params: Work) -> dict[str, int]:
    """A fixed amount of pure-Python work (its wall time shows whether it had a core)."""
    total = 0
    for i in range(params.loops):
        total += i & 7
    return {"total": total}


class Loud(BaseModel):
    lines: int
    chars: int
    threads: int = 1
    go_file: str | None = None


@registry.task("sample.loud", max_attempts=1)
def loud(ctx: TaskContext, params: Loud) -> None:
    """Once ``go_file`` exists (at once without one), logs ``lines`` lines of ``chars``
    characters each as fast as it can, from each of ``threads`` threads."""
    import os
    import threading
    import time

    while params.go_file and not os.path.exists(params.go_file):
        time.sleep(0.01)
    text = "x" * params.chars

    def log_lines(thread: int) -> None:
        for i in range(params.lines):
            ctx.log.info("%d %d %s", thread, i + 1, text)

    threads = [threading.Thread(target=log_lines, args=(t,)) for t in range(params.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@registry.task("sample.leaves_a_foreground_thread", max_attempts=1)
def leaves_a_foreground_thread(ctx: TaskContext, payload: dict[str, object]) -> str:
    """Returns at once, in the worker's own process, leaving a thread that is no daemon
    and never ends (Python waits for such a thread at exit)."""
    import threading

    forever = threading.Event()
    threading.Thread(target=forever.wait, name="left-by-a-task", daemon=False).start()
    return "left one"
