"""The service's persistent job queue (issue 13, item 4): SQLite in WAL mode."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lipsync_tool.errors import CATEGORIES, QueueFullError
from lipsync_tool.serve.store import JobStore


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_job_goes_from_queued_to_done_and_survives_a_restart(tmp_path):
    db = tmp_path / "jobs.db"
    store = JobStore(db)
    job, new = store.submit({"image": "a.png", "audio": "a.wav"}, max_queue=10)
    assert new and job.state == "queued" and store.get(job.id).request == {"image": "a.png", "audio": "a.wav"}
    second, _ = store.submit({"image": "b.png"}, max_queue=10)
    store.close()

    again = JobStore(db)  # a new server process on the same file
    assert [j.id for j in again.jobs("queued")] == [job.id, second.id]
    claimed = again.claim()
    assert claimed.id == job.id and claimed.state == "running" and claimed.attempts == 1
    again.progress(job.id, 0.5)
    assert again.get(job.id).progress == 0.5
    assert again.finish(job.id, {"output": "out.mp4"})
    done = again.get(job.id)
    assert done.state == "done" and done.result == {"output": "out.mp4"} and done.progress == 1.0
    assert done.to_dict()["state"] == "done" and "error" not in done.to_dict()
    assert not again.fail(job.id, {"message": "too late"}), "an ended job never changes again"
    assert again.counts() == {"queued": 1, "running": 0, "done": 1, "failed": 0, "cancelled": 0}


def test_a_job_running_when_the_server_died_runs_again_once(tmp_path):
    db = tmp_path / "jobs.db"
    store = JobStore(db)
    job, _ = store.submit({"n": 1}, max_queue=10)
    store.claim()
    # the server dies here; the next one recovers
    requeued, failed = JobStore(db).recover()
    assert (requeued, failed) == ([job.id], [])
    recovered = JobStore(db).get(job.id)
    assert recovered.state == "queued" and recovered.recoveries == 1 and recovered.to_dict()["recoveries"] == 1
    store = JobStore(db)
    assert store.claim().id == job.id
    # ... and dies again during the same job: it is failed, and its id still answers
    requeued, failed = JobStore(db).recover()
    assert (requeued, failed) == ([], [job.id])
    ended = JobStore(db).get(job.id)
    assert ended.state == "failed" and "stopped during this job 2 times" in ended.error["message"]


def test_identical_requests_at_the_same_moment_share_one_job(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    a, new_a = store.submit({"x": 1}, max_queue=10, dedupe_key="k")
    b, new_b = store.submit({"x": 1}, max_queue=10, dedupe_key="k")
    assert a.id == b.id and new_a and not new_b
    store.claim()
    c, new_c = store.submit({"x": 1}, max_queue=10, dedupe_key="k")
    assert c.id == a.id and not new_c, "a running job also answers"
    store.finish(a.id, {})
    d, new_d = store.submit({"x": 1}, max_queue=10, dedupe_key="k")
    assert new_d and d.id != a.id, "a finished job is not reused"


def test_a_full_queue_refuses_with_retry_after(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    store.submit({"n": 1}, max_queue=2)
    store.submit({"n": 2}, max_queue=2)
    with pytest.raises(QueueFullError) as err:
        store.submit({"n": 3}, max_queue=2, retry_after=7)
    assert err.value.retry_after == 7 and err.value.category == "busy" and "busy" in CATEGORIES
    assert "2 jobs waiting" in str(err.value) and "Try again in 7 s" in err.value.hint
    store.claim()  # a running job no longer waits
    store.submit({"n": 3}, max_queue=2)
    assert store.counts()["queued"] == 2


def test_cancel_and_expiry(tmp_path):
    clock = Clock()
    store = JobStore(tmp_path / "jobs.db", clock=clock)
    queued, _ = store.submit({"n": 1}, max_queue=10)
    running, _ = store.submit({"n": 2}, max_queue=10)
    store.claim()
    store.claim()
    store.add_files(running.id, ["/root/out/b.mp4"])
    assert store.cancel(running.id) and store.get(running.id).state == "cancelled"
    assert not store.cancel(running.id)
    assert store.fail(queued.id, {"type": "EngineError", "message": "boom"})
    keep, _ = store.submit({"n": 3}, max_queue=10)
    clock.now += 3600
    store.finish(store.claim().id, {})
    clock.now += 10
    gone = store.expire(max_age_seconds=60)
    assert sorted(j.id for j in gone) == sorted([queued.id, running.id])
    assert [j.files for j in gone if j.id == running.id] == [["/root/out/b.mp4"]]
    assert store.get(queued.id) is None and store.get(keep.id).state == "done"


def test_threads_submitting_and_claiming_lose_and_duplicate_nothing(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    claimed: list[str] = []
    submitted: list[str] = []
    lock = threading.Lock()

    def submit(i: int) -> None:
        for k in range(20):
            job, _ = store.submit({"thread": i, "k": k}, max_queue=10_000)
            with lock:
                submitted.append(job.id)

    submitters_done = threading.Event()

    def claim() -> None:
        for _ in range(100_000):  # bounded
            job = store.claim()
            if job is None:
                if submitters_done.is_set():
                    return
                continue
            with lock:
                claimed.append(job.id)
            store.finish(job.id, {})

    submitters = [threading.Thread(target=submit, args=(i,)) for i in range(10)]
    claimers = [threading.Thread(target=claim) for _ in range(4)]
    for t in submitters + claimers:
        t.start()
    for t in submitters:
        t.join(120)
    submitters_done.set()
    for t in claimers:
        t.join(120)
    assert len(submitted) == len(set(submitted)) == 200
    assert sorted(claimed) == sorted(submitted), "every job claimed exactly once"
    assert store.counts()["done"] == 200


CLAIMER = """
import json, sys
sys.path.insert(0, {root!r})
from lipsync_tool.serve.store import JobStore
store = JobStore({db!r})
got = []
while (job := store.claim()) is not None:
    got.append(job.id)
    store.finish(job.id, {{}})
print(json.dumps(got))
"""


def test_two_processes_on_one_database_never_take_the_same_job(tmp_path):
    db = tmp_path / "jobs.db"
    store = JobStore(db)
    ids = [store.submit({"n": n}, max_queue=1000)[0].id for n in range(120)]
    code = CLAIMER.format(root=str(Path(__file__).resolve().parents[1]), db=str(db))
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    got = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(got[0] + got[1]) == sorted(ids)
    assert not set(got[0]) & set(got[1])
