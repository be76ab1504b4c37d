"""A stand-in for an upstream ``inference.py``, committed to a throwaway git repo by the tests.

It honours an upstream-style command line and writes a real video with the
``ffmpeg`` it finds on PATH (as the real engines do), muxed with a silent
track, so tests can tell the engine's audio from the user's.
"""
import argparse
import hashlib
import os
import subprocess
import sys
import time

parser = p = argparse.ArgumentParser()
p.add_argument("--face", required=True)
p.add_argument("--audio", required=True)
p.add_argument("--outfile", default="results/result.mp4")
p.add_argument("--checkpoint_path", required=True)
p.add_argument("--fps", type=float, default=25.0)
p.add_argument("--size", type=int, default=256)
p.add_argument("--mode", default="ok")
p.add_argument("--extra_seconds", type=float, default=0.0)
p.add_argument("--sleep", type=float, default=0.0)
p.add_argument("--fail_on_run", type=int, default=0)
p.add_argument("--frame_delay", type=float, default=0.0)
p.add_argument("--mux_like_wav2lip", action="store_true")


def main() -> None:
    args = p.parse_args()

    counter = os.environ.get("FAKE_ENGINE_COUNTER")
    run_number = 0
    if counter:  # counts invocations, so a test can make one particular run fail
        run_number = (int(open(counter).read()) if os.path.exists(counter) else 0) + 1
        open(counter, "w").write(str(run_number))

    trace = os.environ.get("FAKE_ENGINE_TRACE")
    if trace:  # lets tests see when engine runs overlap
        with open(trace, "a") as f:
            f.write(f"start {time.time():.6f} {os.getpid()}\n")

    print("Using cpu for inference.")
    with open(args.checkpoint_path, "rb") as f:
        print("checkpoint sha256", hashlib.sha256(f.read()).hexdigest())
    print("seed", os.environ.get("LIPSYNC_TOOL_SEED"))
    import random

    print("first random number", random.random())  # seeded by lipsync-tool's sitecustomize
    os.makedirs("temp", exist_ok=True)
    open("temp/written_by_engine.txt", "w").write("relative writes land in the run's work dir\n")

    if args.mode == "crash" or (args.fail_on_run and run_number == args.fail_on_run):
        print("Traceback (most recent call last):")
        print('  File "inference.py", line 1, in <module>')
        print("RuntimeError: the fake engine crashed on purpose", file=sys.stderr)
        sys.exit(3)
    if args.mode == "noface":
        print("ValueError: Face not detected! Ensure the video contains a face in all the frames.", file=sys.stderr)
        sys.exit(1)
    if args.mode == "hang":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        open(os.environ["FAKE_PIDFILE"], "w").write(f"{os.getpid()} {child.pid}\n")
        print("hanging", flush=True)
        time.sleep(3600)
    if args.mode == "noout":
        print("done, but wrote nothing")
        sys.exit(0)

    time.sleep(args.sleep)
    # Duration of the staged 16 kHz mono PCM WAV, from its size.
    seconds = (os.path.getsize(args.audio) - 44) / 32000 + args.extra_seconds
    for i in range(5):
        print(f"\rRendering: {20 * (i + 1)}%|", end="", flush=True)
    print()
    cmd = [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
        "-loop", "1", "-framerate", str(args.fps), "-i", args.face,
        "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono",
        "-t", f"{seconds:.3f}",
        "-vf", f"scale={args.size}:{args.size},format=yuv420p",
        "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-shortest",
        args.outfile,
    ]
    if args.mux_like_wav2lip:
        # Wav2Lip's way: frames into temp/result.avi, then a shell-string ffmpeg mux with the audio.
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-loop", "1", "-framerate", str(args.fps), "-i", args.face,
                        "-t", f"{seconds:.3f}", "-vf", f"scale={args.size}:{args.size}", "-c:v", "mpeg4", "-q:v", "3", "temp/result.avi"], check=True)
        subprocess.call("ffmpeg -y -loglevel error -i {} -i {} -strict -2 -q:v 1 {}".format(args.audio, "temp/result.avi", args.outfile), shell=True)
    else:
        subprocess.run(cmd, check=True)
    if args.mode == "empty":
        open(args.outfile, "w").close()
    print("The generated video is named:", args.outfile)
    if trace:
        with open(trace, "a") as f:
            f.write(f"end {time.time():.6f} {os.getpid()}\n")


# The fake engine's worker adapter imports this module for its parser.
if __name__ == "__main__":
    main()
