"""The attempts that hold a worker's resources, and what they hold together.

An attempt holds its cpu, memory and slot from the moment its dispatch is taken until
its thread has returned or its child has exited: while it runs, and after its end was
reported if its thread did not stop in time or its child is still being terminated
(*stuck*). The totals change as attempts come and go, so whether one more dispatch fits
costs the same on a worker with four slots as on one with hundreds (it takes a cycle's
dispatches one after another; adding up every attempt for each of them made the worker
busiest where it has the most slots).
"""

from __future__ import annotations

from uuid import UUID

from services.worker.attempt import Running
from shared.messages import ResourceSpec, WorkerCapacity
from shared.placement_rules import fits

Key = tuple[UUID, int]  # (job id, attempt)


class Holdings:
    def __init__(self, capacity: WorkerCapacity) -> None:
        self.capacity = capacity
        self.running: dict[Key, Running] = {}
        self.stuck: dict[Key, Running] = {}
        self._cpu_units = 0.0
        self._memory_mb = 0

    def start(self, run: Running) -> None:
        """``run`` was taken: it holds its resources from now on."""
        self._add(self.running, run)

    def end(self, run: Running) -> None:
        """``run``'s end is reported: it no longer runs (``stick`` it if its thread or
        child still does)."""
        self._remove(self.running, run.key)

    def stick(self, run: Running) -> None:
        """``run`` ended (reported) while its thread or child still runs: its resources
        stay held until ``release``."""
        self._add(self.stuck, run)

    def release(self, key: Key) -> None:
        """The thread or child of a stuck attempt has ended: its resources are free."""
        self._remove(self.stuck, key)

    def fits(self, job_type: str, resources: ResourceSpec) -> bool:
        """Whether one more attempt needing ``resources`` fits beside those held, by the
        rule the scheduler placed it by (``shared.placement_rules.fits``)."""
        cap = self.capacity
        return fits(
            job_type, resources.cpu_units, resources.memory_mb, True, (job_type,),
            cap.slots - len(self.running) - len(self.stuck),
            cap.cpu_units - self._cpu_units, cap.memory_mb - self._memory_mb,
        )  # fmt: skip

    def allocated(self) -> WorkerCapacity:
        """What the running and the stuck attempts hold together (for the heartbeat)."""
        return WorkerCapacity(
            cpu_units=round(self._cpu_units, 6),
            memory_mb=self._memory_mb,
            slots=len(self.running) + len(self.stuck),
        )

    def stuck_total(self) -> WorkerCapacity:
        """What the stuck attempts alone hold (for the heartbeat; they are few)."""
        stuck = self.stuck.values()
        return WorkerCapacity(
            # Not rounded: the scheduler takes it from the worker's capacity, and must
            # not see room the worker does not have.
            cpu_units=sum(r.dispatch.resources.cpu_units for r in stuck),
            memory_mb=sum(r.dispatch.resources.memory_mb for r in stuck),
            slots=len(stuck),
        )

    def _add(self, table: dict[Key, Running], run: Running) -> None:
        if run.key in table:
            return
        table[run.key] = run
        self._cpu_units += run.dispatch.resources.cpu_units
        self._memory_mb += run.dispatch.resources.memory_mb

    def _remove(self, table: dict[Key, Running], key: Key) -> None:
        run = table.pop(key, None)
        if run is None:
            return
        if not self.running and not self.stuck:
            # Sums of floats drift (0.1 + 0.2 - 0.1 - 0.2 is not 0): start again from an
            # exact zero whenever nothing is held, as a busy worker's often is.
            self._cpu_units = 0.0
            self._memory_mb = 0
            return
        self._cpu_units -= run.dispatch.resources.cpu_units
        self._memory_mb -= run.dispatch.resources.memory_mb
