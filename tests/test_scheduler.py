"""The Scheduler alone: lanes, the CPU pool, failures, cancellation, events.

A small named fake (:class:`Steps`) stands in for the pipeline: each step
records what ran, on which thread, and can be given a hook per (item, step).
Overlap is observed with ``threading.Event``s, never with timings: a step
that must overlap another waits for an event the other sets (with a generous
timeout, so a broken scheduler fails the test instead of hanging it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from lipsync_tool.errors import Interrupted
from lipsync_tool.scheduler import Event, Scheduler

WAIT = 30.0  # only ever reached when the scheduler is broken


class Steps:
    """The Work: ``start`` returns ``"state-<item>"``, ``finish`` ``"result-<item>"``."""

    def __init__(self, hooks: dict[tuple[str, str], Callable[[], None]] | None = None):
        self.hooks = hooks or {}
        self.ran: list[tuple[str, str, str]] = []  # (step, item, thread name)
        self.discarded: list[str] = []
        self._lock = threading.Lock()

    def _step(self, step: str, item: str) -> None:
        with self._lock:
            self.ran.append((step, item, threading.current_thread().name))
        hook = self.hooks.get((item, step))
        if hook is not None:
            hook()

    def start(self, item):
        self._step("start", item)
        return f"state-{item}"

    def render(self, item, state):
        assert state == f"state-{item}"
        self._step("render", item)

    def finish(self, item, state):
        assert state == f"state-{item}"
        self._step("finish", item)
        return f"result-{item}"

    def discard(self, item, state):
        self.discarded.append(item)

    def threads(self, step: str) -> set[str]:
        return {t for s, _, t in self.ran if s == step}


class Log:
    """The event callback: every event, in the order they came."""

    def __init__(self):
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, item) -> list[str]:
        return [e.kind if e.kind != "stage" else f"stage:{e.stage}" for e in self.events if e.item == item]

    def ends(self) -> dict:
        return {e.item: e.kind for e in self.events if e.kind not in ("started", "stage")}


def raiser(exc: BaseException) -> Callable[[], None]:
    def hook() -> None:
        raise exc

    return hook


def waiter(event: threading.Event, seen: list[bool]) -> Callable[[], None]:
    """A hook that waits for *event* and notes whether it came."""
    return lambda: seen.append(event.wait(WAIT))


FULL = ["started", "stage:render", "stage:finish", "finished"]


# -- order, threads and events ----------------------------------------------------------------


@pytest.mark.parametrize("jobs", [1, 2, 3])
def test_every_job_runs_in_order_with_its_events_in_order(jobs):
    work, log = Steps(), Log()
    Scheduler(work, jobs=jobs, on_event=log).run(["a", "b", "c", "d"])
    assert [i for s, i, _ in work.ran if s == "start"] == ["a", "b", "c", "d"]
    assert [i for s, i, _ in work.ran if s == "render"] == ["a", "b", "c", "d"]
    for item in "abcd":
        assert log.of(item) == FULL
    finished = {e.item: e for e in log.events if e.kind == "finished"}
    assert {i: (e.state, e.result) for i, e in finished.items()} == {i: (f"state-{i}", f"result-{i}") for i in "abcd"}
    assert work.discarded == []


def test_with_one_job_every_step_runs_on_the_calling_thread():
    work = Steps()
    Scheduler(work, jobs=1).run(["a", "b"])
    assert {t for _, _, t in work.ran} == {threading.current_thread().name}


def test_the_engine_always_runs_on_the_calling_thread_so_ctrl_c_reaches_it():
    work = Steps()
    Scheduler(work, jobs=3).run(["a", "b", "c", "d"])
    assert work.threads("render") == {threading.current_thread().name}
    assert threading.current_thread().name not in work.threads("finish")


# -- the lane and the pool --------------------------------------------------------------------


def test_one_lane_renders_one_job_at_a_time():
    inside, most = [0], [0]
    lock = threading.Lock()

    def enter_and_leave():
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        for _ in range(200):  # give any other render every chance to start meanwhile
            time.sleep(0)
        with lock:
            inside[0] -= 1

    items = [str(i) for i in range(8)]
    work = Steps({(i, "render"): enter_and_leave for i in items})
    Scheduler(work, jobs=4).run(items)
    assert most[0] == 1
    assert [i for s, i, _ in work.ran if s == "render"] == items


def test_with_two_jobs_the_next_start_and_the_last_finish_overlap_the_engine():
    b_started, a_finishing = threading.Event(), threading.Event()
    seen_b, seen_a = [], []
    work = Steps(
        {
            ("a", "render"): waiter(b_started, seen_b),  # b stages while a renders
            ("b", "start"): b_started.set,
            ("a", "finish"): a_finishing.set,
            ("b", "render"): waiter(a_finishing, seen_a),  # a finishes while b renders
        }
    )
    log = Log()
    Scheduler(work, jobs=2, on_event=log).run(["a", "b"])
    assert seen_b == [True] and seen_a == [True]
    assert log.ends() == {"a": "finished", "b": "finished"}


def test_with_one_job_nothing_overlaps_the_engine():
    b_started = threading.Event()
    seen: list[bool] = []

    def check_b_not_started():
        seen.append(b_started.is_set())

    work = Steps({("a", "render"): check_b_not_started, ("b", "start"): b_started.set})
    Scheduler(work, jobs=1).run(["a", "b"])
    assert seen == [False]


def test_each_device_has_its_own_lane():
    x_rendering, y_rendering = threading.Event(), threading.Event()
    seen_x, seen_y = [], []

    def x_render():
        x_rendering.set()
        seen_y.append(y_rendering.wait(WAIT))

    def y_render():
        y_rendering.set()
        seen_x.append(x_rendering.wait(WAIT))

    work = Steps({("x1", "render"): x_render, ("y1", "render"): y_render})
    log = Log()
    Scheduler(work, jobs=1, on_event=log, device=lambda item: item[0]).run(["x1", "y1", "x2", "y2"])
    assert seen_x == [True] and seen_y == [True]  # the two engines ran at once
    assert [i for s, i, _ in work.ran if s == "render" and i.startswith("x")] == ["x1", "x2"]
    assert set(log.ends().values()) == {"finished"}


# -- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failing_job_does_not_stop_the_others(jobs):
    boom = RuntimeError("boom")
    work = Steps({("b", "start"): raiser(boom), ("c", "render"): raiser(boom), ("d", "finish"): raiser(boom)})
    log = Log()
    Scheduler(work, jobs=jobs, on_event=log).run(["a", "b", "c", "d", "e"])
    assert log.ends() == {"a": "finished", "b": "failed", "c": "failed", "d": "failed", "e": "finished"}
    failed = {e.item: e for e in log.events if e.kind == "failed"}
    assert {i: (e.stage, e.state, e.error) for i, e in failed.items()} == {
        "b": ("start", None, boom),
        "c": ("render", "state-c", boom),
        "d": ("finish", "state-d", boom),
    }
    assert log.of("c") == ["started", "stage:render", "failed"]


def test_fail_fast_stops_taking_work_after_a_failure():
    work = Steps({("b", "render"): raiser(RuntimeError("boom"))})
    log = Log()
    scheduler = Scheduler(work, jobs=1, fail_fast=True, on_event=log)
    scheduler.run(["a", "b", "c", "d"])
    assert log.ends() == {"a": "finished", "b": "failed", "c": "not_run", "d": "not_run"}
    assert {e.reason for e in log.events if e.kind == "not_run"} == {"failed"}
    assert [i for s, i, _ in work.ran if s == "start"] == ["a", "b"]
    assert scheduler.stopped


def test_fail_fast_discards_a_job_started_ahead():
    b_started = threading.Event()
    seen: list[bool] = []

    def fail_once_b_is_staged():
        seen.append(b_started.wait(WAIT))
        raise RuntimeError("boom")

    work = Steps({("a", "render"): fail_once_b_is_staged, ("b", "start"): b_started.set})
    log = Log()
    Scheduler(work, jobs=2, fail_fast=True, on_event=log).run(["a", "b", "c"])
    assert seen == [True]
    assert log.ends() == {"a": "failed", "b": "not_run", "c": "not_run"}
    assert work.discarded == ["b"]  # what its start holds is given back


# -- cancellation and Ctrl-C --------------------------------------------------------------------


def test_cancel_lets_the_running_job_end_and_runs_nothing_else():
    holder: list[Scheduler] = []
    work = Steps({("a", "render"): lambda: holder[0].cancel()})
    log = Log()
    holder.append(Scheduler(work, jobs=1, on_event=log))
    holder[0].run(["a", "b", "c"])
    assert log.ends() == {"a": "finished", "b": "not_run", "c": "not_run"}
    assert {e.reason for e in log.events if e.kind == "not_run"} == {"cancelled"}
    assert [i for s, i, _ in work.ran if s == "start"] == ["a"]


def test_cancel_before_run_starts_nothing():
    work, log = Steps(), Log()
    scheduler = Scheduler(work, on_event=log)
    scheduler.cancel()
    scheduler.run(["a", "b"])
    assert work.ran == []
    assert [(e.kind, e.item, e.reason) for e in log.events] == [("not_run", "a", "cancelled"), ("not_run", "b", "cancelled")]


def test_cancel_with_interrupt_stops_the_running_engine():
    """From another thread, as a service would: the engine's kill makes it fail; that is an interruption."""
    rendering, killed = threading.Event(), threading.Event()
    holder: list[Scheduler] = []

    def engine():
        rendering.set()
        if killed.wait(WAIT):
            raise RuntimeError("engine killed")

    work = Steps({("a", "render"): engine})
    log = Log()
    holder.append(Scheduler(work, jobs=1, on_event=log, on_interrupt=killed.set))
    canceller = threading.Thread(target=lambda: rendering.wait(WAIT) and holder[0].cancel(interrupt=True))
    canceller.start()
    holder[0].run(["a", "b"])
    canceller.join()
    assert killed.is_set()
    assert log.ends() == {"a": "interrupted", "b": "not_run"}
    assert [e.state for e in log.events if e.kind == "interrupted"] == ["state-a"]


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), Interrupted("interrupted")])
def test_ctrl_c_in_the_engine_is_reported_and_re_raised(exc):
    b_started = threading.Event()
    seen: list[bool] = []

    def ctrl_c():
        seen.append(b_started.wait(WAIT))
        raise exc

    stopped: list[bool] = []
    work = Steps({("a", "render"): ctrl_c, ("b", "start"): b_started.set})
    log = Log()
    scheduler = Scheduler(work, jobs=2, on_event=log, on_interrupt=lambda: stopped.append(True))
    with pytest.raises(type(exc)):
        scheduler.run(["a", "b", "c"])
    assert seen == [True] and stopped == [True] and scheduler.interrupted
    assert log.ends() == {"a": "interrupted", "b": "not_run", "c": "not_run"}
    assert [(e.stage, e.state) for e in log.events if e.kind == "interrupted"] == [("render", "state-a")]
    assert {e.reason for e in log.events if e.kind == "not_run"} == {"interrupted"}
    assert work.discarded == ["b"]


def test_ctrl_c_in_a_start_on_the_lane_is_reported_without_a_state():
    work = Steps({("b", "start"): raiser(KeyboardInterrupt())})
    log = Log()
    with pytest.raises(KeyboardInterrupt):
        Scheduler(work, jobs=1, on_event=log, on_interrupt=lambda: None).run(["a", "b", "c"])
    assert log.ends() == {"a": "finished", "b": "interrupted", "c": "not_run"}
    assert [(e.stage, e.state) for e in log.events if e.kind == "interrupted"] == [("start", None)]


def test_jobs_must_be_at_least_one():
    with pytest.raises(ValueError, match="at least 1"):
        Scheduler(Steps(), jobs=0)
