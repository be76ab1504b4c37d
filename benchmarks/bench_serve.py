"""``lipsync-tool serve`` under load (issue 13), with the tests' fake engine as a plug-in.

A real ``python -m lipsync_tool serve`` process on a free loopback port runs the
fake engine (tests/fake_engine/, loaded through an entry point, with a throwaway
git "upstream" and checkpoint made here, as tests/conftest.py makes them), so
its jobs go through the real scheduler, warm worker, ffmpeg and publish path.
The cases, in this order:

``overhead``  K jobs of 1 s audio on the same portrait, one at a time.  In-process
              baseline: one ``LipSyncPipeline(engine="fake", runner="worker")``
              used as a context manager (a warm worker, like the server's lane),
              ``run()`` timed per job.  Server: ``POST /v1/jobs`` then
              ``GET /v1/jobs/{id}`` every 50 ms until done, timed from the POST to
              the answer that says done.  The two alternate job by job (after one
              warm-up job each), so both see the machine's load of the moment.
              Also one cold ``lipsync-tool run … --runner worker`` for reference.
              Target: the service adds <= 0.5 s per job.
``get``       ``GET /v1/jobs/{id}`` of a finished job from N client threads (one
              httpx.Client each, keep-alive) for a fixed time: requests per second
              and latency.  Target: >= 300 rps at 8 clients (2-core machine).
``submit``    while 32 such pollers run, 20 ``POST /v1/jobs`` one after another
              (distinct outputs, so no deduplication): each POST's latency.
              Target: p95 <= 250 ms.  The 20 jobs are cancelled afterwards.

The client threads run in this process and share the machine's cores with the
server: on a 2-core machine the figures are the pair's, not the server's alone.
Reproduce::

    python benchmarks/bench_serve.py --out benchmarks/results/serve.json
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from _common import emit, machine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from serve_harness import Server, free_port  # the tests' own harness

ROOT = Path(__file__).resolve().parents[1]
FAKE_DIR = ROOT / "tests" / "fake_engine"
PORTRAIT = ROOT / "tests" / "data" / "portrait.jpg"
TONE = "sine=frequency=220:sample_rate=44100,volume='0.6+0.4*sin(2*PI*3*t)':eval=frame"
FINISHED = ("done", "failed", "cancelled")
TARGETS = {"get_rps_at_8": 300.0, "submit_p95_s": 0.25, "overhead_s": 0.5}


# -- the fake engine as a plug-in (the logic of tests/conftest.py's fixtures) -------------------


def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True, timeout=60).stdout.strip()


def fake_upstream(scratch: Path) -> tuple[Path, str]:
    """A bare git repository holding the fake ``inference.py``: (its path, the commit)."""
    repo = scratch / "fake-upstream"
    repo.mkdir()
    git("init", "-q", "-b", "main", cwd=repo)
    shutil.copyfile(FAKE_DIR / "upstream_inference.py", repo / "inference.py")
    (repo / "README.md").write_text("fake upstream\n")
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "first", cwd=repo)
    commit = git("rev-parse", "HEAD", cwd=repo)
    bare = scratch / "fake-upstream.git"
    git("clone", "-q", "--bare", str(repo), str(bare), cwd=scratch)
    return bare, commit


def plugin_env(scratch: Path) -> dict[str, str]:
    """The environment of a ``lipsync-tool`` process that loads the fake engine as an
    entry-point plug-in (also set in this process, for the in-process baseline)."""
    bare, commit = fake_upstream(scratch)
    ckpt = scratch / "weights" / "fake.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(os.urandom(4096))
    site = scratch / "plugin-site"
    dist = site / "fake_lipsync_engine-0.0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-lipsync-engine\nVersion: 0.0.0\n")
    (dist / "entry_points.txt").write_text("[lipsync_tool.engines]\nfake = fake_lipsync_engine:FakeEngine\n")
    (scratch / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIPSYNC_TOOL_") and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(
        FAKE_ENGINE_REPO=bare.as_uri(),
        FAKE_ENGINE_COMMIT=commit,
        FAKE_ENGINE_CKPT_URLS=ckpt.as_uri(),
        FAKE_ENGINE_CKPT_SIZE=str(ckpt.stat().st_size),
        FAKE_ENGINE_CKPT_SHA256=hashlib.sha256(ckpt.read_bytes()).hexdigest(),
        LIPSYNC_TOOL_CACHE=str(scratch / "cache"),
        TMPDIR=str(scratch / "tmp"),
        NO_PROXY="127.0.0.1,localhost",
        PYTHONPATH=os.pathsep.join([str(site), str(FAKE_DIR), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    return env


def register_in_process(env: dict[str, str]) -> None:
    """The fake engine in this process too (for the in-process baseline)."""
    for key in (
        "FAKE_ENGINE_REPO",
        "FAKE_ENGINE_COMMIT",
        "FAKE_ENGINE_CKPT_URLS",
        "FAKE_ENGINE_CKPT_SIZE",
        "FAKE_ENGINE_CKPT_SHA256",
        "LIPSYNC_TOOL_CACHE",
        "TMPDIR",
        "NO_PROXY",
    ):
        os.environ[key] = env[key]
    for key in ("LIPSYNC_TOOL_REGISTRY", "LIPSYNC_TOOL_OFFLINE", "LIPSYNC_TOOL_DEBUG", "LIPSYNC_TOOL_TOKEN"):
        os.environ.pop(key, None)
    tempfile.tempdir = env["TMPDIR"]
    sys.path.insert(0, str(FAKE_DIR))
    import fake_lipsync_engine

    from lipsync_tool import engines

    engines.register(fake_lipsync_engine.FakeEngine, replace=True)


def ffmpeg_path() -> str:
    from lipsync_tool.media import find_ffmpeg

    return find_ffmpeg().path


def speech(ff: str, path: Path, seconds: float) -> Path:
    subprocess.run([ff, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", TONE, "-t", str(seconds), str(path)], check=True, timeout=60)
    return path


# -- the server process (the logic of tests/serve_harness.py) ---------------------------------------


def start_server(scratch: Path, env: dict[str, str]) -> Server:
    """The tests' harness (tests/serve_harness.py): a real ``lipsync-tool serve`` on a free loopback port."""
    root = scratch / "root"
    root.mkdir()
    port = free_port()
    args = ["--root", str(root), "--host", "127.0.0.1", "--port", str(port), "--db", str(scratch / "jobs.sqlite3"),
            "--engine", "fake", "--runner", "worker", "--log-level", "warning"]  # fmt: skip
    return Server(f"http://127.0.0.1:{port}", root, scratch / "jobs.sqlite3", None, env, scratch / "server.log", args).start()


def submit(c: httpx.Client, body: dict) -> tuple[str, float]:
    """POST /v1/jobs: (the job's id, the request's seconds)."""
    start = time.perf_counter()
    r = c.post("/v1/jobs", json=body)
    took = time.perf_counter() - start
    if r.status_code != 202:
        raise SystemExit(f"POST /v1/jobs answered {r.status_code}: {r.text}")
    return r.json()["id"], took


def wait_done(c: httpx.Client, job_id: str, interval: float = 0.05, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = c.get(f"/v1/jobs/{job_id}").json()
        if job.get("state") in FINISHED:
            if job["state"] != "done":
                raise SystemExit(f"job {job_id} ended {job['state']}: {job.get('error')}")
            return job
        time.sleep(interval)
    raise SystemExit(f"job {job_id} did not end in {timeout} s")


# -- statistics -------------------------------------------------------------------------------------


def summary(values: list[float]) -> dict[str, float]:
    """Seconds → milliseconds: p50, p95, max, mean."""
    ms = sorted(v * 1000 for v in values)
    if not ms:
        return {}
    p95 = ms[max(0, math.ceil(0.95 * len(ms)) - 1)]  # nearest rank
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 2),
        "p95_ms": round(p95, 2),
        "max_ms": round(ms[-1], 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


class Pollers:
    """*n* threads, each with its own keep-alive client, GETting one job as fast as they can."""

    def __init__(self, server: Server, job_id: str, n: int):
        self.server, self.path, self.n = server, f"/v1/jobs/{job_id}", n
        self.stop = threading.Event()
        self.latencies: list[list[float]] = [[] for _ in range(n)]
        self.errors = [0] * n
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(n)]

    def _loop(self, i: int) -> None:
        append = self.latencies[i].append
        with self.server.client() as c:
            c.get(self.path)  # connect outside the measurement
            while not self.stop.is_set():
                start = time.perf_counter()
                r = c.get(self.path)
                append(time.perf_counter() - start)
                if r.status_code != 200:
                    self.errors[i] += 1

    def __enter__(self) -> Pollers:
        for t in self.threads:
            t.start()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.elapsed = time.perf_counter() - self.started
        for t in self.threads:
            t.join(timeout=60)

    def result(self) -> dict:
        all_lat = [v for lat in self.latencies for v in lat]
        return {
            "clients": self.n,
            "seconds": round(self.elapsed, 2),
            "requests": len(all_lat),
            "errors": sum(self.errors),
            "rps": round(len(all_lat) / self.elapsed, 1),
            **summary(all_lat),
        }


# -- the cases ----------------------------------------------------------------------------------------


def overhead(server: Server, scratch: Path, env: dict[str, str], ff: str, jobs: int) -> tuple[dict, str]:
    """Per-job wall time, a warm in-process pipeline against the server, alternating
    (see the module doc): (the result, the id of a finished job)."""
    from lipsync_tool.pipeline import LipSyncPipeline

    face = server.root / "face.jpg"
    shutil.copyfile(PORTRAIT, face)
    audio = speech(ff, server.root / "speech.wav", 1.0)
    (scratch / "local").mkdir()
    times: dict[str, list[float]] = {"in_process": [], "server": [], "server_recorded": [], "server_queue_wait": [], "post": []}
    first: dict[str, float] = {}
    runners = set()
    with LipSyncPipeline(engine="fake", runner="worker") as pipe, server.client() as c:
        for i in range(jobs + 1):  # job 0 warms both up (clone, checkpoint, worker start, preprocessing)
            for side in ("in_process", "server") if i % 2 == 0 else ("server", "in_process"):
                start = time.perf_counter()
                if side == "in_process":
                    runners.add(pipe.run(face, audio, scratch / "local" / f"out-{i}.mp4").report["engine"]["runner"])
                else:
                    job_id, post = submit(c, {"image": "face.jpg", "audio": "speech.wav", "output": f"overhead/out-{i}.mp4"})
                    job = wait_done(c, job_id, interval=0.05)
                    runners.add(job["result"]["report"]["engine"]["runner"])
                took = time.perf_counter() - start
                if i == 0:
                    first[side] = round(took, 3)
                    continue
                times[side].append(took)
                if side == "server":
                    times["server_recorded"].append(job["finished"] - job["created"])
                    times["server_queue_wait"].append(job["started"] - job["created"])
                    times["post"].append(post)
            print(f"overhead job {i}: " + (", ".join(f"{k} {v[-1]:.3f}" for k, v in times.items()) if i else str(first)), flush=True)
    if runners != {"worker"}:
        raise SystemExit(f"expected every job in a warm worker, the reports say {sorted(runners)}")
    return _overhead_result(times, first, jobs, cold_cli(scratch, env, face, audio)), job_id


def _overhead_result(times: dict[str, list[float]], first: dict[str, float], jobs: int, cold: float) -> dict:
    mean = {k: statistics.fmean(v) for k, v in times.items()}
    extra = mean["server"] - mean["in_process"]
    return {
        "jobs": jobs,
        "audio_s": 1.0,
        "poll_interval_s": 0.05,
        "per_job_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "mean_s": {k: round(v, 3) for k, v in mean.items()},
        "first_job_s": first,
        "overhead_per_job_s": round(extra, 3),
        "overhead_per_job_pct": round(100 * extra / mean["in_process"], 1),
        "overhead_recorded_per_job_s": round(mean["server_recorded"] - mean["in_process"], 3),
        "median_s": {k: round(statistics.median(v), 3) for k, v in times.items()},
        "overhead_median_of_pairs_s": round(statistics.median(srv - base for srv, base in zip(times["server"], times["in_process"])), 3),
        "post_quiet": summary(times["post"]),
        "cold_cli_run_s": round(cold, 3),
        "target": f"<= {TARGETS['overhead_s']} s",
        "met": extra <= TARGETS["overhead_s"],
    }


def cold_cli(scratch: Path, env: dict[str, str], face: Path, audio: Path) -> float:
    """One ``lipsync-tool run … --engine fake --runner worker`` in a fresh process (caches warm)."""
    argv = [sys.executable, "-m", "lipsync_tool", "run", str(face), str(audio), str(scratch / "cold.mp4"), "--engine", "fake", "--runner", "worker"]
    start = time.perf_counter()
    with open(scratch / "cold-cli.log", "wb") as log:
        proc = subprocess.run(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=300, check=False)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the cold CLI run failed ({proc.returncode}); see {scratch / 'cold-cli.log'}")
    return took


def get_rps(server: Server, job_id: str, levels: list[int], seconds: float) -> dict:
    out = []
    for n in levels:
        with Pollers(server, job_id, n) as p:
            time.sleep(seconds)
        out.append(p.result())
        print(f"GET x{n}: {out[-1]}", flush=True)
    at8 = next((r["rps"] for r in out if r["clients"] == 8), None)
    return {"levels": out, "target": f">= {TARGETS['get_rps_at_8']:.0f} rps at 8 clients", "met": at8 is not None and at8 >= TARGETS["get_rps_at_8"]}


def submit_latency(server: Server, job_id: str, pollers: int, count: int, gap: float) -> dict:
    """POST latency while *pollers* GET a finished job; the jobs are cancelled afterwards."""
    posts, ids = [], []
    with server.client() as c:
        with Pollers(server, job_id, pollers) as p:
            time.sleep(1.0)  # the pollers are up to speed
            for i in range(count):
                new_id, took = submit(c, {"image": "face.jpg", "audio": "speech.wav", "output": f"load/out-{i}.mp4"})
                ids.append(new_id)
                posts.append(took)
                time.sleep(gap)
        states = [c.get(f"/v1/jobs/{j}").json()["state"] for j in ids]
        # Newest first: the queued ones go at once; the one staged for the lane waits for the job in the lane
        # (a staged job's cancel only ends when its lane takes it), and the last cancel stops the worker's job.
        for j in reversed(ids):
            if c.get(f"/v1/jobs/{j}").json()["state"] not in FINISHED:
                c.delete(f"/v1/jobs/{j}")
    p95 = summary(posts)["p95_ms"] / 1000
    out = {
        "pollers": p.result(),
        "posts": {**summary(posts), "all_ms": [round(x * 1000, 1) for x in posts]},
        "gap_s": gap,
        "jobs_by_state_when_done": {s: states.count(s) for s in sorted(set(states))},
        "target": f"p95 <= {TARGETS['submit_p95_s'] * 1000:.0f} ms",
        "met": p95 <= TARGETS["submit_p95_s"],
    }
    print(f"POST under load: {out['posts']}", flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", default="1,8,32", help="GET client threads, comma-separated")
    p.add_argument("--seconds", type=float, default=10.0, help="how long each GET level runs")
    p.add_argument("--jobs", type=int, default=8, help="jobs per side in the overhead case")
    p.add_argument("--submits", type=int, default=20)
    p.add_argument("--pollers", type=int, default=32)
    p.add_argument("--submit-gap", type=float, default=0.25, help="seconds between two POSTs")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (server log, outputs)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="lipsync-bench-serve-"))
    env = plugin_env(scratch)
    register_in_process(env)
    ff = ffmpeg_path()
    results: dict = {"command": " ".join(["python", *sys.argv]), "machine": machine(ffmpeg=ff, httpx=httpx.__version__, loadavg_at_start=list(os.getloadavg()))}
    server = start_server(scratch, env)
    began = time.perf_counter()
    try:
        results["overhead"], finished = overhead(server, scratch, env, ff, args.jobs)
        results["get"] = get_rps(server, finished, [int(n) for n in args.clients.split(",")], args.seconds)
        results["submit"] = submit_latency(server, finished, args.pollers, args.submits, args.submit_gap)
    finally:
        server.stop()
        results["machine"]["loadavg_at_end"] = list(os.getloadavg())
        results["total_s"] = round(time.perf_counter() - began, 1)
    results["targets_met"] = {k: results[k]["met"] for k in ("get", "submit", "overhead")}
    emit(results, args.out)
    if args.keep:
        print(f"kept {scratch}")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
