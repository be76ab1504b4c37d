"""The fake engine's warm-worker adapter (tests only): the behaviours of
``upstream_inference.py``, whose own parser reads each job's command line,
served by a long-lived worker.

Its "model" is the checkpoint's sha256, loaded once per worker; its
"preprocessing" is the face scaled to --size and decoded to raw BGR by the
``ffmpeg`` on PATH, which the preprocessing cache keeps.

With ``fake_quality`` fast or improved (the engine's options, as Wav2Lip's
adapter reads ``wav2lip_quality``) it behaves like Wav2Lip's loop instead:
every frame of the face (image or video) is read; its "detector" finds no
face in a blank frame and otherwise a fixed box; its "generator" is the box
squeezed through 96x96 and brightened; fast pastes the whole box, improved
only the mouth through ``workerd/blend.py``, enhanced restores the face crop
with a stub restorer (an unsharp mask) first (``workerd/restore.py``); frames without a face pass
through unchanged.  With ``$FAKE_ENGINE_FRAMES`` (a folder) it saves the
frames it read (``input.npy``) and those it sent (``output.npy``).
"""

import hashlib
import json
import os
import random
import subprocess
import sys
import time

#: The fake detector's face box, as fractions of the frame: y1 y2 x1 x2.
FAKE_BOX = (0.15, 0.95, 0.2, 0.8)

def count_run() -> int:
    counter = os.environ.get("FAKE_ENGINE_COUNTER")
    if not counter:
        return 0
    n = (int(open(counter).read()) if os.path.exists(counter) else 0) + 1
    open(counter, "w").write(str(n))
    return n


def trace(what: str) -> None:
    path = os.environ.get("FAKE_ENGINE_TRACE")
    if path:
        with open(path, "a") as f:
            f.write(f"{what} {time.time():.6f} {os.getpid()}\n")


class Adapter:
    def __init__(self, workdir):
        self.workdir = workdir
        import inference  # the fake upstream's own module, from the worker's link farm (its parser)

        self.parser = inference.parser
        self.models = {}  # checkpoint real path -> its sha256 ("the weights")

    def load(self, ctx, path):
        real = os.path.realpath(path)
        if real in self.models:
            ctx.note("models", {"loaded": False})
            return self.models[real]
        started = time.monotonic()
        with open(path, "rb") as f:
            self.models[real] = hashlib.sha256(f.read()).hexdigest()
        ctx.note("models", {"loaded": True, "seconds": round(time.monotonic() - started, 3)})
        return self.models[real]

    def face_frame(self, ctx, args):
        """The face as one raw BGR frame of --size (cached by the parent when it asks)."""
        pre = ctx.preprocess
        cached = os.path.join(pre["dir"], "face.bgr") if pre else None
        if pre and pre["hit"]:
            ctx.note("preprocess", {"hit": True})
            return open(cached, "rb").read()
        argv = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", args.face, "-frames:v", "1",
                "-vf", f"scale={args.size}:{args.size}", "-f", "rawvideo", "-pix_fmt", "bgr24", "-"]  # fmt: skip
        data = subprocess.run(argv, capture_output=True, check=True).stdout
        if cached:
            with open(cached, "wb") as f:
                f.write(data)
        ctx.note("preprocess", {"hit": False})
        return data

    def render(self, ctx):
        args = self.parser.parse_args(ctx.job["argv"])
        run_number = count_run()
        trace("start")
        ctx.seed()
        print("Using cpu for inference.")
        print("checkpoint sha256", self.load(ctx, args.checkpoint_path))
        print("seed", ctx.job.get("seed"))
        print("first random number", random.random())
        os.makedirs("temp", exist_ok=True)
        open("temp/written_by_engine.txt", "w").write("relative writes land in the run's work dir\n")
        if args.mode == "crash" or (args.fail_on_run and run_number == args.fail_on_run):
            raise RuntimeError("the fake engine crashed on purpose")
        if args.mode == "noface":
            raise ValueError("Face not detected! Ensure the video contains a face in all the frames.")
        if args.mode == "die":
            sys.stderr.flush()
            os._exit(9)
        if args.mode == "hang":
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
            open(os.environ["FAKE_PIDFILE"], "w").write(f"{os.getpid()} {child.pid}\n")
            print("hanging", flush=True)
            time.sleep(3600)
        if args.mode in ("noout", "empty"):
            print("done, but wrote nothing")
            return {}
        time.sleep(args.sleep)
        if ctx.options.get("fake_quality", "off") != "off":
            return self.render_faces(ctx, args)
        frame = self.face_frame(ctx, args)
        seconds = (os.path.getsize(args.audio) - 44) / 32000 + args.extra_seconds
        count = max(1, round(seconds * args.fps))
        ctx.video(args.size, args.size, args.fps)
        batch = 8
        for start in range(0, count, batch):
            n = min(batch, count - start)
            if start and args.frame_delay:
                time.sleep(args.frame_delay)
            ctx.frames(frame * n)
            if os.environ.get("FAKE_DIE_AFTER_FRAMES") and start + n >= int(os.environ["FAKE_DIE_AFTER_FRAMES"]):
                os._exit(9)  # a crash in the middle of the stream
            ctx.progress("render", start + n, count)
            print(f"\rRendering: {100 * (start + n) // count}%|", end="", flush=True)
        print()
        trace("end")
        if ctx.job.get("batch_size") is not None:
            ctx.note("batch_size", {"value": ctx.job["batch_size"], "source": "job"})
        return {"frames": count}

    # -- fake_quality fast / improved: Wav2Lip's loop, faked ------------------------------------------

    def face_frames(self, ctx, args):
        """Every frame of the face at --size, as N x size x size x 3 BGR (cached by the parent when it asks)."""
        import numpy as np

        pre = ctx.preprocess
        cached = os.path.join(pre["dir"], "frames.bgr") if pre else None
        if pre and pre["hit"]:
            ctx.note("preprocess", {"hit": True})
            data = open(cached, "rb").read()
        else:
            argv = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", args.face,
                    "-vf", f"scale={args.size}:{args.size}", "-f", "rawvideo", "-pix_fmt", "bgr24", "-"]  # fmt: skip
            data = subprocess.run(argv, capture_output=True, check=True, timeout=120).stdout
            if cached:
                with open(cached, "wb") as f:
                    f.write(data)
            ctx.note("preprocess", {"hit": False})
        return np.frombuffer(data, dtype=np.uint8).reshape(-1, args.size, args.size, 3)

    def face_box(self, ctx, s):
        """The fake detector's face box (y1 y2 x1 x2 in the size x size frame): FAKE_BOX, or with a face hint
        (``--face-index``) the hinted face, chosen among its "detections" (FAKE_BOX and the hint's box, or only
        FAKE_BOX with $FAKE_HINT_MISS) as Wav2Lip's adapter chooses.  With a hint, the box is part of the
        preprocessing (``box.json`` in the cache), as Wav2Lip's cached face boxes are."""
        import lipsync_worker

        face_hint = lipsync_worker.load_helper("face_hint")
        hint = face_hint.FaceHint.read(ctx.job.get("cwd") or os.getcwd())
        fixed = (round(FAKE_BOX[0] * s), round(FAKE_BOX[1] * s), round(FAKE_BOX[2] * s), round(FAKE_BOX[3] * s))
        if hint is None:
            return fixed
        pre = ctx.preprocess
        cached = os.path.join(pre["dir"], "box.json") if pre else None
        if pre and pre["hit"]:
            return tuple(json.load(open(cached))["box"])
        x1, y1, x2, y2 = face_hint.scaled(hint.box, hint.frame, (s, s))
        target = (x1, y1, x2, y2)
        detections = [(fixed[2], fixed[0], fixed[3], fixed[1])] + ([] if os.environ.get("FAKE_HINT_MISS") else [target])
        bx1, by1, bx2, by2 = detections[hint.choose(detections, target, what="the fake detector's frame")]
        box = (max(0, round(by1)), min(s, round(by2)), max(0, round(bx1)), min(s, round(bx2)))
        ctx.note("face_hint", {"index": hint.index, "box": list(box)})
        if cached:
            with open(cached, "w") as f:
                json.dump({"box": list(box)}, f)
        return box

    def render_faces(self, ctx, args):
        import lipsync_worker  # the worker's main module (its helpers)
        import numpy as np

        options = ctx.options
        frames = self.face_frames(ctx, args)
        still = len(frames) == 1
        faceless = [i for i, f in enumerate(frames) if f.std() < 1.0]  # the fake detector: a blank frame has no face
        if faceless and (still or len(faceless) == len(frames) or options.get("fake_require_face_every_frame")):
            raise ValueError("Face not detected! Ensure the video contains a face in all the frames.")
        s = args.size
        box = self.face_box(ctx, s)
        blend = lipsync_worker.load_helper("blend")
        size = options.get("fake_mask_size") or blend.DEFAULT_SIZE
        feather = options.get("fake_mask_feather")
        feather = blend.DEFAULT_FEATHER if feather is None else feather
        count = max(1, round(((os.path.getsize(args.audio) - 44) / 32000 + args.extra_seconds) * args.fps))
        restore = lipsync_worker.load_helper("restore")
        crops: list = []  # the shapes the stub restorer was given
        restorer = restore.Restorer(stub_enhance(crops)) if options["fake_quality"] == "enhanced" else None
        put = restore.mouth_paster(blend, restorer, size, feather, fake_paste)
        out, passed = [], []
        for i in range(count):
            source = i % len(frames)
            frame = frames[source].copy()
            if source in faceless:
                passed.append(i)
            elif options["fake_quality"] == "fast":
                y1, y2, x1, x2 = box
                frame[y1:y2, x1:x2] = fake_generator(frame[y1:y2, x1:x2])
            else:  # improved, enhanced: through the workers' own mouth paster
                y1, y2, x1, x2 = box
                put(fake_generator(frame[y1:y2, x1:x2]), frame, box)
            out.append(frame)
        ctx.video(s, s, args.fps)
        for start in range(0, count, 8):
            ctx.frames(np.stack(out[start : start + 8]))
            ctx.progress("render", min(count, start + 8), count)
        if passed:
            ctx.note("frames_without_face", {"count": len(passed), "first": passed[:10]})
        if restorer is not None:
            ctx.note("restorer", {"name": "stub", **restorer.summary()})
        dump = os.environ.get("FAKE_ENGINE_FRAMES")
        if dump:
            os.makedirs(dump, exist_ok=True)
            with open(os.path.join(dump, "restorer_crops.json"), "w") as f:
                json.dump(crops, f)
            np.save(os.path.join(dump, "input.npy"), frames)
            np.save(os.path.join(dump, "output.npy"), np.stack(out))
        return {"frames": count}


def fake_paste(pred, frame, box):
    """Upstream's paste, faked: the generated face (already the box's size) into its box."""
    y1, y2, x1, x2 = box
    frame[y1:y2, x1:x2] = pred
    return frame


def stub_enhance(seen: list):
    """A stand-in for GFPGAN (enhanced): an unsharp mask on the crop it is given, whose shape it records;
    a crop without detail (a flat one) is "no face found"."""
    import cv2

    def enhance(crop):
        seen.append(list(crop.shape))
        if crop.std() < 1.0:
            return None
        blurred = cv2.GaussianBlur(crop, (0, 0), 2.0)
        return cv2.addWeighted(crop, 1.8, blurred, -0.8, 0)

    return enhance


def fake_generator(face):
    """What the fake model makes of a face crop: squeezed through 96x96 (as Wav2Lip's is) and brightened."""
    import cv2
    import numpy as np

    h, w = face.shape[:2]
    small = cv2.resize(face, (96, 96), interpolation=cv2.INTER_AREA)
    small = np.clip(small.astype(np.int16) + 30, 0, 255).astype(np.uint8)
    return cv2.resize(small, (w, h))
