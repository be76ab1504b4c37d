"""The scheduler: engine lanes, a CPU pool, cancellation and progress events.

Every job goes through three steps of a :class:`Work`: ``start`` (CPU:
validate and stage the inputs), ``render`` (the engine) and ``finish`` (CPU:
upscale and publish).  :class:`Scheduler` runs many jobs through them:

* Each device has one engine lane, which renders one job at a time, so a GPU
  holds one model at a time.  The first lane is the calling thread, so Ctrl-C
  reaches the engine exactly as in a single run; a lane for another device
  gets a thread of its own.
* With ``jobs=N`` a pool of N-1 threads starts each lane's next jobs (at most
  N-1 ahead) and finishes rendered ones while the lanes render.  With
  ``jobs=1`` every step runs on the lane, one job after the other.
* A lane takes its jobs in the order given.
* A step that raises fails its job; the others go on, unless ``fail_fast``.
* :meth:`Scheduler.cancel` takes no new work, and can stop the running
  engines too (``interrupt=True``).
* Ctrl-C (``KeyboardInterrupt``, or :class:`~lipsync_tool.errors.Interrupted`
  from a step): no new work, every child process stopped, the job on the lane
  reported interrupted, and the interrupt re-raised.
* When :meth:`Scheduler.run` ends, a job that never got to run is reported
  ``not_run``, with why.
* Instead of a list, :meth:`Scheduler.run` takes a :class:`JobSource`: jobs
  that arrive while it runs (a service's queue).  Its lanes are fixed; each
  takes its next job from the source, waiting for one, until the source
  closes.

Each job's events, in order: ``started`` → ``stage`` (render) → ``stage``
(finish) → ``finished``; or ``failed`` / ``interrupted`` at any step; or only
``not_run``.  They go to one callback, from whichever thread took the step,
so the callback must be thread-safe; what it raises is no job's failure, and
ends the run.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .errors import Interrupted

EventKind = Literal["started", "stage", "finished", "failed", "interrupted", "not_run"]
#: What ends a run early: the user's Ctrl-C, as Python raises it or as a step re-raised it.
_INTERRUPTS = (Interrupted, KeyboardInterrupt)


class Work(Protocol):
    """The steps of one kind of job.  ``start``'s value (the job's state) is
    passed to the other steps."""

    def start(self, item: Any) -> Any:
        """Validate and stage (CPU; any thread)."""

    def render(self, item: Any, state: Any) -> None:
        """Run the engine (on the lane of the job's device)."""

    def finish(self, item: Any, state: Any) -> Any:
        """Upscale and publish (CPU; any thread); the job's result."""

    def discard(self, item: Any, state: Any) -> None:
        """Give back what a started job holds, when it will never render."""


class JobSource(Protocol):
    """Jobs that arrive over time, for a long-lived :meth:`Scheduler.run`."""

    def lanes(self) -> list[Hashable]:
        """The devices, one lane each (fixed for the run)."""

    def take(self, device: Hashable, *, wait: bool) -> Any:
        """The next job for *device*'s lane, or None: none now (``wait=False``),
        or the source is closed (``wait=True`` blocks until one of the two)."""


class RunWork:
    """A :class:`Work` whose state is a pipeline ``Run`` (what
    ``LipSyncPipeline.start()`` returns): the Run renders, finishes and
    discards itself.  Subclasses write ``start``."""

    def render(self, item: Any, run: Any) -> None:
        run.render()

    def finish(self, item: Any, run: Any) -> Any:
        return run.finish()

    def discard(self, item: Any, run: Any) -> None:
        run.discard()


@dataclass(frozen=True)
class Event:
    """Something that happened to one job (see the module doc for the order)."""

    kind: EventKind
    item: Any
    #: The step the job is at ("start", "render", "finish"), or the one that failed.
    stage: str | None = None
    #: ``start``'s value, once there is one.
    state: Any = None
    #: ``finish``'s value (``finished``).
    result: Any = None
    #: What the step raised (``failed``).
    error: BaseException | None = None
    #: Why a job never ran (``not_run``): "interrupted", "failed" (after a
    #: failure with ``fail_fast``) or "cancelled".
    reason: str | None = None


@dataclass
class _Lane:
    """One device's engine, with the jobs waiting for it."""

    device: Hashable
    pending: deque = field(default_factory=deque)
    #: Jobs started ahead on the pool: (item, the future of ``(state, error)``).
    staged: deque = field(default_factory=deque)
    #: The job this lane works on now: (item, state, step).
    hand: tuple[Any, Any, str] | None = None
    #: What ended a lane thread (re-raised by :meth:`Scheduler.run`).
    error: BaseException | None = None
    #: Where jobs come from after ``pending`` (a service's queue), if anywhere.
    source: JobSource | None = None

    def next_pending(self, *, wait: bool) -> Any:
        """The next job not yet started (None: none)."""
        if self.pending:
            return self.pending.popleft()
        if self.source is not None:
            return self.source.take(self.device, wait=wait)
        return None


def _kill_children() -> None:
    from .process import kill_all_live

    kill_all_live()


class Scheduler:
    """Runs jobs through a :class:`Work` (see the module doc).  One run per instance."""

    def __init__(
        self,
        work: Work,
        *,
        jobs: int = 1,
        fail_fast: bool = False,
        on_event: Callable[[Event], None] | None = None,
        device: Callable[[Any], Hashable] | None = None,
        on_interrupt: Callable[[], None] | None = None,
    ):
        """*device* names a job's device (one lane each; default: one lane for
        all); *on_interrupt* stops what runs now (default: every child process)."""
        if jobs < 1:
            raise ValueError(f"jobs must be at least 1, not {jobs}")
        self.work = work
        self.workers = jobs - 1
        self.fail_fast = fail_fast
        self._on_event = on_event or (lambda event: None)
        self._device = device or (lambda item: None)
        self._on_interrupt = on_interrupt or _kill_children
        self._stopped = False
        self._reason: str | None = None
        #: Set before running engines are stopped: their failure is the interrupt's doing.
        self._interrupting = False
        self.interrupted = False
        self._pool: ThreadPoolExecutor | None = None
        self._finishing: list[Future] = []

    @property
    def stopped(self) -> bool:
        """Whether it takes no more work."""
        return self._stopped

    def cancel(self, *, interrupt: bool = False) -> None:
        """Take no new work: what runs now ends as usual, the rest is ``not_run``.
        With *interrupt*, stop the running engines and child processes too; a
        job whose engine then fails is reported interrupted."""
        self._stop("cancelled")
        if interrupt:
            self._interrupting = True
            self._on_interrupt()

    def _stop(self, reason: str) -> None:
        if not self._stopped:
            self._stopped, self._reason = True, reason

    # -- the run ------------------------------------------------------------------------------

    def run(self, items: Iterable[Any] | JobSource) -> None:
        """Run *items* (or what a :class:`JobSource` gives until it closes);
        every one ends with an event.  Re-raises a Ctrl-C once reported."""
        lanes = self._lanes(items)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="scheduler-cpu") if self.workers else None
        threads = [threading.Thread(target=self._drive_thread, args=(lane,), name=f"scheduler-lane-{lane.device}", daemon=True) for lane in lanes[1:]]
        try:
            for thread in threads:
                thread.start()
            if lanes:
                self._drive(lanes[0])
            for thread in threads:
                thread.join()
            for lane in lanes:
                if lane.error is not None:
                    raise lane.error
            for future in self._finishing:
                future.result()
        except _INTERRUPTS:
            self.interrupted = self._interrupting = True
            self._stop("interrupted")
            self._on_interrupt()  # staging and finishing on the pool, the other lanes' engines
            if lanes:
                self._report_hand(lanes[0])
            raise
        finally:
            self._stopped = True
            for thread in threads:
                thread.join()
            if self._pool:
                self._pool.shutdown(wait=True, cancel_futures=True)
            for lane in lanes:
                self._drop(lane)

    def _lanes(self, items: Iterable[Any] | JobSource) -> list[_Lane]:
        if hasattr(items, "take"):
            source: JobSource = items  # type: ignore[assignment]
            return [_Lane(device, source=source) for device in source.lanes()]
        lanes: dict[Hashable, _Lane] = {}
        for item in items:  # type: ignore[union-attr]
            key = self._device(item)
            lanes.setdefault(key, _Lane(key)).pending.append(item)
        return list(lanes.values())

    def _drive_thread(self, lane: _Lane) -> None:
        try:
            self._drive(lane)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the calling thread by run()
            lane.error = exc
            if isinstance(exc, _INTERRUPTS):
                self._report_hand(lane)

    def _drive(self, lane: _Lane) -> None:
        """A lane's loop: take the next job (started ahead on the pool, or
        here), render it here, and finish it on the pool (or here)."""
        while not self._stopped:
            self._top_up(lane)
            taken = self._take(lane)
            if taken is None:
                break
            item, state, exc = taken
            self._top_up(lane)
            if exc is not None:
                self._failed(item, "start", exc)
                continue
            lane.hand = (item, state, "render")
            if not self._render(lane, item, state):
                continue
            if self._pool:
                lane.hand = None
                self._finishing.append(self._pool.submit(self._finish, item, state))
            else:
                lane.hand = (item, state, "finish")
                self._finish(item, state)
                lane.hand = None

    def _top_up(self, lane: _Lane) -> None:
        """Start the lane's next jobs on the pool, up to one per pool thread."""
        while self._pool and not self._stopped and len(lane.staged) < self.workers:
            item = lane.next_pending(wait=False)
            if item is None:
                break
            lane.staged.append((item, self._pool.submit(self._start, item)))

    def _take(self, lane: _Lane) -> tuple[Any, Any, BaseException | None] | None:
        """The next job with ``(state, error)`` of its start, or None when none is left."""
        if lane.staged:
            item, future = lane.staged[0]
            state, exc = future.result()  # still staged while it waits: a Ctrl-C here leaves it to _drop()
            lane.staged.popleft()
            return item, state, exc
        item = lane.next_pending(wait=True)
        if item is None:
            return None
        lane.hand = (item, None, "start")
        state, exc = self._start(item)
        lane.hand = None
        return item, state, exc

    # -- the steps ----------------------------------------------------------------------------

    def _start(self, item: Any) -> tuple[Any, BaseException | None]:
        self._emit(Event("started", item, stage="start"))
        try:
            return self.work.start(item), None
        except _INTERRUPTS:
            raise
        except Exception as exc:  # noqa: BLE001 - the job fails, the others go on
            return None, exc

    def _render(self, lane: _Lane, item: Any, state: Any) -> bool:
        self._emit(Event("stage", item, stage="render", state=state))
        try:
            self.work.render(item, state)
        except _INTERRUPTS:
            raise
        except Exception as exc:  # noqa: BLE001 - likewise
            lane.hand = None
            if self._interrupting:
                self._emit(Event("interrupted", item, stage="render", state=state))
            else:
                self._failed(item, "render", exc, state)
            return False
        return True

    def _finish(self, item: Any, state: Any) -> None:
        self._emit(Event("stage", item, stage="finish", state=state))
        try:
            result = self.work.finish(item, state)
        except _INTERRUPTS:
            raise
        except Exception as exc:  # noqa: BLE001 - likewise
            self._failed(item, "finish", exc, state)
            return
        self._emit(Event("finished", item, stage="finish", state=state, result=result))

    # -- endings ------------------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        self._on_event(event)

    def _failed(self, item: Any, stage: str, exc: BaseException, state: Any = None) -> None:
        if self.fail_fast:
            self._stop("failed")
        self._emit(Event("failed", item, stage=stage, state=state, error=exc))

    def _report_hand(self, lane: _Lane) -> None:
        if lane.hand is not None:
            item, state, stage = lane.hand
            lane.hand = None
            self._emit(Event("interrupted", item, stage=stage, state=state))

    def _drop(self, lane: _Lane) -> None:
        """After the run: jobs started ahead but never rendered give back what
        they hold (or fail, when their start failed); the rest never ran."""
        ended: set[int] = set()
        for item, future in lane.staged:
            if not future.done() or future.cancelled():
                continue
            if future.exception() is not None:  # a Ctrl-C seen by a pool thread
                self._emit(Event("interrupted", item, stage="start"))
                ended.add(id(item))
                continue
            state, exc = future.result()
            if state is not None:
                self.work.discard(item, state)
            elif exc is not None:
                self._failed(item, "start", exc)
                ended.add(id(item))
        reason = "interrupted" if self.interrupted else (self._reason or "cancelled")
        for item in [*(i for i, _ in lane.staged if id(i) not in ended), *lane.pending]:
            self._emit(Event("not_run", item, reason=reason))
        lane.staged.clear()
        lane.pending.clear()


__all__ = ["Event", "JobSource", "RunWork", "Scheduler", "Work"]
