"""Download throughput over loopback: lipsync-tool's Downloader vs curl.

One file (default 1 GiB of random bytes) is served over 127.0.0.1 by a
small sendfile()-based HTTP server; curl and lipsync-tool fetch it in the
same run, alternately.  lipsync-tool's time includes everything it does for
a verified file: streaming to a .incomplete file, sha256 (computed while the
bytes arrive), size check, fsync and os.replace.  Target: >= 0.8x curl.

    python benchmarks/bench_download.py [--mib 1024] [--repeat 3] [--out benchmarks/results/download.json]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import emit, machine  # noqa: E402

from lipsync_tool.engines.base import CheckpointSpec  # noqa: E402
from lipsync_tool.resources.cache import Cache  # noqa: E402
from lipsync_tool.resources.download import Downloader  # noqa: E402


def serve(path: Path) -> ThreadingHTTPServer:
    size = path.stat().st_size

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            with open(path, "rb") as f:
                self.connection.sendfile(f)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    curl = shutil.which("curl")
    if not curl:
        sys.exit("curl is needed for the baseline")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        src = d / "blob.bin"
        h = hashlib.sha256()
        with open(src, "wb") as f:
            for _ in range(args.mib):
                chunk = os.urandom(1 << 20)
                h.update(chunk)
                f.write(chunk)
        spec_size, sha = src.stat().st_size, h.hexdigest()
        httpd = serve(src)
        url = f"http://127.0.0.1:{httpd.server_address[1]}/blob.bin"
        spec = CheckpointSpec(name="blob.bin", urls=(url,), size=spec_size, sha256=sha, dest="x")
        curl_t, tool_t = [], []
        env = {**os.environ, "NO_PROXY": "127.0.0.1"}
        for i in range(-1, args.repeat):  # round -1 warms the page cache and imports, untimed
            out = d / "curl.bin"
            t = time.perf_counter()
            subprocess.run([curl, "-s", "-o", str(out), url], check=True, env=env)
            if i >= 0:
                curl_t.append(time.perf_counter() - t)
            out.unlink()
            cache = Cache(d / f"cache{i}")
            t = time.perf_counter()
            r = Downloader().ensure(spec, cache.checkpoint_path("bench", "blob.bin"), cache.lock_path("ckpt", "bench", "blob.bin"))
            if i >= 0:
                tool_t.append(time.perf_counter() - t)
            assert r.action == "downloaded"
            shutil.rmtree(d / f"cache{i}")
        httpd.shutdown()
    mib = args.mib
    c, t = statistics.median(curl_t), statistics.median(tool_t)
    result = {
        "benchmark": f"download {mib} MiB over loopback (sendfile server), verified",
        "command": f"python benchmarks/bench_download.py --mib {mib} --repeat {args.repeat}",
        "machine": machine(),
        "curl_seconds": [round(x, 3) for x in curl_t],
        "lipsync_tool_seconds": [round(x, 3) for x in tool_t],
        "curl_MiB_per_s": round(mib / c, 1),
        "lipsync_tool_MiB_per_s": round(mib / t, 1),
        "ratio_vs_curl": round(c / t, 3),
        "target": "ratio_vs_curl >= 0.8 (lipsync-tool also hashes, checks and fsyncs)",
    }
    result["pass"] = result["ratio_vs_curl"] >= 0.8
    emit(result, args.out)


if __name__ == "__main__":
    main()
