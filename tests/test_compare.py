"""``lipsync-tool compare``: per-engine outputs, the side-by-side video, the tables.

Two fake engines stand in for SadTalker and Wav2Lip: the conftest one
("fake") and a subclass registered here ("fake2"); "fakebroken" always
crashes in its engine step.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

FAST = ["--x264-preset", "ultrafast"]


@pytest.fixture
def engines(fake_engine):
    """Register fake2 and fakebroken beside the conftest's fake engine."""
    import fake_lipsync_engine

    from lipsync_tool import engines as registry

    class Fake2(fake_lipsync_engine.FakeEngine):
        name = "fake2"
        display_name = "Fake Two"

    class FakeBroken(fake_lipsync_engine.FakeEngine):
        name = "fakebroken"
        display_name = "Fake Broken"

        def build_command(self, job, options, ws):
            cmd = super().build_command(job, options, ws)
            argv = list(cmd.argv)
            argv[argv.index("--mode") + 1] = "crash"
            return type(cmd)(argv, cmd.cwd, cmd.env)

    for cls in (Fake2, FakeBroken):
        registry.register(cls, replace=True)
    yield fake_engine
    for cls in (Fake2, FakeBroken):
        registry.unregister(cls.name)


@pytest.fixture
def trace(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "engine-trace.txt"
    monkeypatch.setenv("FAKE_ENGINE_TRACE", str(path))
    return path


def frame(ff, video: Path, dest: Path):
    """The first frame of *video* as a PIL image."""
    from PIL import Image

    from conftest import run_ffmpeg

    run_ffmpeg(ff, "-i", str(video), "-frames:v", "1", str(dest))
    return Image.open(dest).convert("L")


def region_diff(a, b, box) -> float:
    """Mean absolute difference of two grey images inside *box*."""
    import numpy as np

    x = np.asarray(a.crop(box), dtype=float)
    y = np.asarray(b.crop(box), dtype=float)
    return float(abs(x - y).mean())


# -- the whole command --------------------------------------------------------------------------


def test_compare_writes_each_output_and_a_labelled_side_by_side(cli, engines, media, tmp_path, ff):
    from lipsync_tool.media import probe

    face, speech = media.portrait(), media.audio(seconds=1.0)
    out = tmp_path / "cmp"
    result = cli("compare", face, speech, out, "--engines", "fake,fake2", *FAST)
    assert result.code == 0, result.output

    clips = [probe(out / f"{name}.mp4", measure=True) for name in ("fake", "fake2")]
    for info in clips:
        assert info.video.height == 1080 and info.audio.codec == "aac"
    sbs = probe(out / "side_by_side.mp4", measure=True)
    assert sbs.video.height == 1080
    assert sbs.video.width == sum(c.video.width for c in clips) == 2160
    assert sbs.video.codec == "h264" and sbs.video.fps == 25
    assert sbs.audio is not None and sbs.audio.codec == "aac"
    assert abs(sbs.video.duration - 1.0) <= 1 / 25 + 1e-6
    assert abs(sbs.audio.duration - 1.0) <= 0.05
    assert "Side by side:" in result.stdout and "2160x1080" in result.stdout

    # Each half is its engine's clip, with a label burned into its top-left corner.
    left, right = frame(ff, out / "side_by_side.mp4", tmp_path / "sbs.png"), frame(ff, out / "fake.mp4", tmp_path / "fake.png")
    right2 = frame(ff, out / "fake2.mp4", tmp_path / "fake2.png")
    size = 1080 // 18
    label = (size, size, size + 4 * size, 2 * size)
    far = (700, 900, 1000, 1060)
    assert region_diff(left, right, far) < 6
    assert region_diff(left, right, label) > 25
    right_half = left.crop((1080, 0, 2160, 1080))
    assert region_diff(right_half, right2, far) < 6
    assert region_diff(right_half, right2, label) > 25


def test_comparison_json_and_md_have_the_table_fields(cli, engines, media, tmp_path):
    face, speech = media.portrait(), media.audio(seconds=1.0)
    out = tmp_path / "cmp"
    result = cli("compare", face, speech, out, "--engines", "fake,fake2", "--fake-extra-seconds", "0.5", *FAST)
    assert result.code == 0, result.output
    data = json.loads((out / "comparison.json").read_text())

    assert data["inputs"] == {"image": str(face), "audio": str(speech)}
    assert data["options"]["x264_preset"] == "ultrafast" and data["options"]["target_height"] == 1080
    assert data["scorer"] is None
    assert [e["engine"] for e in data["engines"]] == ["fake", "fake2"]
    for e in data["engines"]:
        assert e["status"] == "ok" and e["error"] is None
        assert e["commit"] == engines.upstream.first and re.fullmatch(r"[0-9a-f]{40}", e["commit"])
        assert e["repo"] == engines.upstream.url
        assert {"fake_mode": "ok", "fake_extra_seconds": 0.5, "fake_sleep": 0.0}.items() <= e["options"].items()
        assert set(e["timings"]) >= {"validate", "resources", "stage", "engine", "upscale", "publish"}
        assert all(isinstance(v, float) and v >= 0 for v in e["timings"].values())
        assert e["wall_s"] >= e["timings"]["engine"] > 0
        assert e["resolution"] == "1080x1080" and e["width"] == 1080 and e["height"] == 1080
        assert e["fps"] == 25
        assert abs(e["duration"] - 1.0) <= 1 / 25 + 1e-6
        assert e["lse_c"] == "not computed" and e["lse_d"] == "not computed"
        assert e["output"] == str(out / f"{e['engine']}.mp4") and Path(e["report"]).is_file()
    assert data["side_by_side"]["width"] == 2160 and data["side_by_side"]["height"] == 1080
    assert data["side_by_side"]["engines"] == ["fake", "fake2"] and data["side_by_side"]["error"] is None

    md = (out / "comparison.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Engine"))
    for column in ("Commit", "Options", "engine (s)", "upscale (s)", "Resolution", "FPS", "Duration (s)", "LSE-C", "LSE-D", "AV offset", "Mouth sharpness", "A−V (s)"):
        assert column in header
    rows = [line for line in md.splitlines() if line.startswith("| fake")]
    assert len(rows) == 2
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[0] == "fake" and cells[1] == "ok" and engines.upstream.first[:12] in cells[2]
    assert "fake_extra_seconds=0.5" in cells[3]
    assert cells[-8:] == ["1080x1080", "25", "1.00", "not computed", "not computed", "not computed", "not computed", "–"]
    assert "fake: not asked for (compare --score computes them)" in md


def test_one_failing_engine_does_not_stop_the_others(cli, engines, media, tmp_path, trace):
    from lipsync_tool.media import probe

    face, speech = media.portrait(), media.audio(seconds=1.0)
    out = tmp_path / "cmp"
    result = cli("compare", face, speech, out, "--engines", "fakebroken,fake", *FAST)
    assert result.code == 1, result.output
    assert sum(1 for line in trace.read_text().splitlines() if line.startswith("start")) == 2
    assert (out / "fake.mp4").is_file() and not (out / "fakebroken.mp4").exists()
    data = json.loads((out / "comparison.json").read_text())
    broken, fine = data["engines"]
    temp = broken["error"]["temp_dir"]
    assert temp and Path(temp, "engine.log").is_file()
    shutil.rmtree(temp)
    assert broken["status"] == "failed" and broken["error"]["type"] == "EngineError" and "Fake Broken failed (RuntimeError: the fake engine crashed on purpose)" in broken["error"]["message"]
    assert "engine" in broken["timings"] and broken["resolution"] is None
    assert broken["lse_c"] == "not computed" and broken["commit"] == engines.upstream.first
    assert fine["status"] == "ok"
    sbs = probe(out / "side_by_side.mp4")
    assert (sbs.video.width, sbs.video.height) == (1080, 1080)
    assert data["side_by_side"]["engines"] == ["fake"]
    md = (out / "comparison.md").read_text()
    assert re.search(r"^\| fakebroken \| failed: Fake Broken failed \(RuntimeError: the fake engine crashed on purpose\)", md, re.MULTILINE)
    assert re.search(r"fakebroken\s+failed", result.stdout)


def test_usage_problems_stop_compare_before_any_engine_runs(cli, engines, media, tmp_path, trace):
    face, speech = media.portrait(), media.audio(seconds=1.0)
    out = tmp_path / "cmp"
    wrong_owner = cli("compare", face, speech, out, "--engines", "fake", "--wav2lip-pads", "0", "10", "0", "0")
    assert wrong_owner.code == 2 and "--wav2lip-pads: belongs to the wav2lip engine, which is not compared" in wrong_owner.stderr
    unknown = cli("compare", face, speech, out, "--engines", "fake,nope")
    assert unknown.code == 2 and "unknown engine 'nope'" in unknown.stderr
    no_font = cli("compare", face, speech, out, "--engines", "fake", "--font", tmp_path / "missing.ttf")
    assert no_font.code == 1 and "no such font file" in no_font.stderr
    out.mkdir()
    (out / "fake.mp4").write_bytes(b"an earlier result")
    exists = cli("compare", face, speech, out, "--engines", "fake")
    assert exists.code == 2 and "already holds fake.mp4" in exists.stderr and "--overwrite" in exists.stderr
    assert not trace.exists()


# -- pieces -------------------------------------------------------------------------------------


def test_side_by_side_graph_scales_labels_and_stacks_every_clip(tmp_path):
    from lipsync_tool.compare import Clip, side_by_side_argv

    font = tmp_path / "font.ttf"
    clips = [Clip(tmp_path / "a.mp4", "SadTalker"), Clip(tmp_path / "b.mp4", "Wav2Lip"), Clip(tmp_path / "c.mp4", "Fake Two")]
    argv = side_by_side_argv("ffmpeg", clips, tmp_path / "speech.wav", tmp_path / "out.mp4", height=720, fps=25, duration=1.5, font=font, preset="ultrafast")
    graph = argv[argv.index("-filter_complex") + 1]
    assert graph.count("scale=-2:720") == 3
    assert graph.count("drawtext=") == 3
    for label in ("text=SadTalker", "text=Wav2Lip", "text=Fake Two"):
        assert label in graph
    assert f"fontfile={font}" in graph and "expansion=none" in graph
    assert "hstack=inputs=3" in graph
    assert argv[argv.index("-t") + 1] == "1.500000"
    inputs = [argv[i + 1] for i, a in enumerate(argv) if a == "-i"]
    assert inputs == [str(c.path) for c in clips] + [str(tmp_path / "speech.wav")]
    maps = [argv[i + 1] for i, a in enumerate(argv) if a == "-map"]
    assert maps[1] == "3:a:0" and argv[argv.index("-acodec") + 1] == "aac"
    single = side_by_side_argv("ffmpeg", clips[:1], tmp_path / "speech.wav", tmp_path / "out.mp4", height=720, fps=25, duration=1.5, font=font)
    assert "hstack" not in single[single.index("-filter_complex") + 1]


def test_find_font_fails_clearly_when_there_is_none(tmp_path, monkeypatch):
    from lipsync_tool.compare import ENV_FONT, find_font
    from lipsync_tool.errors import DependencyError

    monkeypatch.delenv(ENV_FONT, raising=False)
    with pytest.raises(DependencyError) as info:
        find_font(search_dirs=[tmp_path / "nothing"])
    assert "no font found" in str(info.value) and "--font" in info.value.hint
    fonts = tmp_path / "fonts" / "truetype"
    fonts.mkdir(parents=True)
    (fonts / "Other.otf").write_bytes(b"x")
    assert find_font(search_dirs=[tmp_path / "fonts"]).name == "Other.otf"
    (fonts / "DejaVuSans.ttf").write_bytes(b"x")
    assert find_font(search_dirs=[tmp_path / "fonts"]).name == "DejaVuSans.ttf"
    monkeypatch.setenv(ENV_FONT, str(fonts / "Other.otf"))
    assert find_font(search_dirs=[]).name == "Other.otf"


def test_this_machine_has_a_label_font():
    from lipsync_tool.compare import find_font

    assert find_font().is_file()


def test_no_scorer_ships_and_scores_are_never_made_up(tmp_path):
    from lipsync_tool.compare import NOT_COMPUTED, SyncScore, available_scorers, score_fields

    assert available_scorers() == []
    video, audio = tmp_path / "v.mp4", tmp_path / "a.wav"
    empty = score_fields(None, video, audio)
    assert empty["lse_c"] == NOT_COMPUTED == empty["lse_d"] == "not computed" and empty["scorer"] is None

    class Measured:
        name = "syncnet-test"

        def __init__(self):
            self.calls = []

        def score(self, v, a):
            self.calls.append((v, a))
            return SyncScore(lse_c=7.25, lse_d=6.5, scorer=self.name)

    class Broken:
        name = "broken"

        def score(self, v, a):
            raise RuntimeError("no weights")

    measured = Measured()
    measured_fields = score_fields(measured, video, audio)
    assert measured_fields == {
        "lse_c": 7.25,
        "lse_d": 6.5,
        "av_offset": NOT_COMPUTED,
        "mouth_sharpness": NOT_COMPUTED,
        "av_duration_diff_s": None,
        "scorer": "syncnet-test",
        "score_note": None,
    }
    assert measured.calls == [(video, audio)]
    failed = score_fields(Broken(), video, audio)
    assert failed["lse_c"] == failed["lse_d"] == NOT_COMPUTED and "no weights" in failed["score_note"]
    assert score_fields(measured, None, audio)["lse_c"] == NOT_COMPUTED and len(measured.calls) == 1


def test_a_registered_scorer_fills_in_the_comparison(engines, media, tmp_path):
    from lipsync_tool.compare import SyncScore, compare, register_scorer, unregister_scorer

    seen = []

    class Recording:
        name = "recording"

        def score(self, video, audio):
            seen.append(Path(video).name)
            return SyncScore(lse_c=8.0, lse_d=6.0, scorer=self.name)

    register_scorer("recording", Recording)
    try:
        result = compare(media.portrait(), media.audio(seconds=1.0), tmp_path / "cmp", engines="fake", options={"x264_preset": "ultrafast", "target_height": 240})
    finally:
        unregister_scorer("recording")
    assert result.exit_code == 0
    assert seen == ["fake.mp4"]
    entry = result.data["engines"][0]
    assert (entry["lse_c"], entry["lse_d"], entry["scorer"]) == (8.0, 6.0, "recording")
    assert "| 8.000 | 6.000 |" in result.md_path.read_text()


# -- what compare writes: guarded like OUTPUT -----------------------------------------------------


@pytest.mark.parametrize("name", ["comparison.json", "comparison.md", "fake.report.json", "side_by_side.mp4"])
def test_every_file_compare_writes_needs_overwrite_to_be_replaced(cli, engines, media, tmp_path, trace, name):
    face, speech = media.portrait(), media.audio(seconds=1.0)
    out = tmp_path / "cmp"
    out.mkdir()
    (out / name).write_text("an earlier result\n")
    refused = cli("compare", face, speech, out, "--engines", "fake", *FAST)
    assert refused.code == 2, refused.output
    assert f"already holds {name}" in refused.stderr and "--overwrite" in refused.stderr
    assert (out / name).read_text() == "an earlier result\n"
    assert not trace.exists()
    replaced = cli("compare", face, speech, out, "--engines", "fake", "--overwrite", "--target-height", "240", *FAST)
    assert replaced.code == 0, replaced.output
    assert (out / name).read_bytes() != b"an earlier result\n"


def test_compare_never_writes_over_an_input_even_with_overwrite(cli, engines, media, tmp_path, trace):
    from lipsync_tool.compare import find_font

    face, speech = media.portrait(), media.audio(seconds=1.0)
    font = tmp_path / "label.ttf"
    shutil.copyfile(find_font(), font)
    out = tmp_path / "cmp"
    out.mkdir()
    os.link(font, out / "comparison.md")  # the label font, hard-linked where the table goes
    result = cli("compare", face, speech, out, "--engines", "fake", "--font", font, "--overwrite", *FAST)
    assert result.code == 2, result.output
    assert f"{out / 'comparison.md'}: is one of the inputs ({font}" in result.stderr
    (out / "comparison.md").unlink()
    (out / "fake.report.json").symlink_to(speech)  # the audio, linked where a report goes
    result = cli("compare", face, speech, out, "--engines", "fake", "--font", font, "--overwrite", *FAST)
    assert result.code == 2, result.output
    assert f"{out / 'fake.report.json'}: is one of the inputs ({speech}" in result.stderr
    assert not trace.exists()
    assert font.read_bytes() == find_font().read_bytes()


def test_compare_counts_reference_videos_as_inputs(engines, media, tmp_path, trace, monkeypatch):
    import fake_lipsync_engine

    from lipsync_tool.compare import compare
    from lipsync_tool.errors import OutputPathError

    out = tmp_path / "cmp"
    out.mkdir()
    ref = out / "side_by_side.mp4"
    shutil.copyfile(media.video("pose.mp4"), ref)
    monkeypatch.setattr(fake_lipsync_engine.FakeEngine, "staged_refs", lambda self, options: {"ref_pose": ref})
    with pytest.raises(OutputPathError, match="is one of the inputs"):
        compare(media.portrait(), media.audio(seconds=1.0), out, engines="fake", options={"overwrite": True, "x264_preset": "ultrafast"})
    assert not trace.exists()
