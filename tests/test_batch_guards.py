"""What a batch writes, guarded like OUTPUT, and manifests numbered as the user sees them.

Every file a batch writes (each row's output, its ``.report.json``, its HLS
folder, and ``OUT_DIR/batch_report.jsonl``) is checked at validation, so
``--validate-only`` catches it: never an input of the manifest (or a link to
one), never another row's file, never outside ``--out-dir``, never someone
else's file without ``--overwrite``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest

FAST = ["--x264-preset", "ultrafast", "--target-height", "240", "--skip-face-check"]


def refused(result, summary: str, *fragments: str, absent: tuple[str, ...] = ()) -> str:
    """A validation failure: exit 2, *summary* and every fragment said, nothing in *absent*."""
    assert result.code == 2, result.output
    text = result.stderr
    for fragment in (summary, *fragments):
        assert fragment in text, f"{fragment!r} missing from:\n{text}"
    for fragment in absent:
        assert fragment not in text, f"{fragment!r} should not be in:\n{text}"
    return text


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows([[str(c) for c in row] for row in rows])
    return path


@pytest.fixture
def inputs(media):
    return {"face": media.portrait("face.jpg"), "a": media.audio("a.wav", seconds=1.0), "b": media.audio("b.wav", seconds=1.0)}


@pytest.fixture
def trace(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "engine-trace.txt"
    monkeypatch.setenv("FAKE_ENGINE_TRACE", str(path))
    return path


def batch(cli, manifest: Path, out: Path, *extra):
    return cli("batch", manifest, "--out-dir", out, "--engine", "fake", *FAST, *extra)


# -- item 8: outputs stay inside --out-dir ------------------------------------------------------


def test_a_row_cannot_write_outside_the_out_dir(cli, fake_engine, inputs, tmp_path, trace):
    out = tmp_path / "runs" / "out"
    out.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "link").symlink_to(elsewhere, target_is_directory=True)
    (out / "away.mp4").symlink_to(elsewhere / "away.mp4")  # a dangling link that leads out
    (out / "r.report.json").symlink_to(elsewhere / "r.json")
    face, a = inputs["face"], inputs["a"]
    manifest = write_csv(
        tmp_path / "jobs.csv",
        ["image", "audio", "output", "hls"],
        [
            [face, a, "../../escape.mp4", ""],  # line 2
            [face, a, tmp_path / "absolute.mp4", ""],  # 3
            [face, a, "link/through.mp4", ""],  # 4: through a link inside the out dir
            [face, a, "away.mp4", ""],  # 5: a link itself
            [face, a, "fine.mp4", "../streams"],  # 6: the HLS folder escapes
            [face, a, out / "inside.mp4", "hls/ok"],  # 7: an absolute path inside is fine
            [face, a, "r.mp4", ""],  # 8: its report is a link that leads out
        ],
    )
    for extra in (["--validate-only"], []):
        result = batch(cli, manifest, out, *extra)
        text = refused(
            result,
            "6 of 7 rows are invalid",
            f"line 2, column output: {tmp_path / 'escape.mp4'} is outside --out-dir {out}",
            f"line 3, column output: {tmp_path / 'absolute.mp4'} is outside --out-dir {out}",
            f"line 4, column output: {out / 'link' / 'through.mp4'} leads outside --out-dir {out} through a link",
            f"line 5, column output: {out / 'away.mp4'} leads outside --out-dir {out} through a link",
            f"line 6, column hls: {tmp_path / 'runs' / 'streams'} (the hls folder of this row) is outside --out-dir {out}",
            f"line 8, column output: {out / 'r.report.json'} (the report of this row) leads outside --out-dir {out} through a link",
        )
        assert "line 7" not in text
    assert not trace.exists()
    assert not (tmp_path / "escape.mp4").exists() and not (tmp_path / "absolute.mp4").exists() and list(elsewhere.iterdir()) == []


# -- item 1: never an input, never another row's file --------------------------------------------


def test_what_a_row_writes_is_never_an_input_of_the_manifest(cli, fake_engine, media, tmp_path, trace):
    out = tmp_path / "out"
    out.mkdir()
    face, a = media.portrait("face.jpg"), media.audio("a.wav", seconds=1.0)
    talk = out / "talk.report.json"  # an input (WAV inside) named like a row's report
    shutil.copyfile(media.audio("talk.wav", seconds=1.0), talk)
    os.link(a, out / "hard.mp4")  # a hard link to an input, where a row's output goes
    (out / "soft.mp4").symlink_to(face)  # a symbolic one
    manifest = write_csv(
        out / "jobs.csv",
        ["image", "audio", "output", "hls"],
        [
            [face, talk, "x.mp4", ""],  # line 2: fine by itself
            [face, a, "talk.mp4", ""],  # 3: its report is line 2's audio
            [face, a, "hard.mp4", ""],  # 4
            [face, a, "soft.mp4", ""],  # 5
            [face, a, "y.mp4", "jobs.csv"],  # 6: the HLS folder is the manifest
        ],
    )
    before = {p: p.read_bytes() for p in (face, a, talk, manifest)}
    # --overwrite: an input is never replaced, not even when replacing is allowed.
    for extra in (["--validate-only"], []):
        result = batch(cli, manifest, out, "--overwrite", *extra)
        text = refused(
            result,
            "4 of 5 rows are invalid",
            f"line 3, column output: {talk} (the report of this row) is the audio of line 2; refusing to overwrite it",
            f"line 4, column output: {out / 'hard.mp4'} is the audio of line 3; refusing to overwrite it",
            f"line 5, column output: {out / 'soft.mp4'} is the image of line 2; refusing to overwrite it",
            f"line 6, column hls: {out / 'jobs.csv'} (the hls folder of this row) is the manifest; refusing to overwrite it",
        )
        assert "line 2," not in text
    assert not trace.exists()
    assert {p: p.read_bytes() for p in before} == before


def test_a_row_report_that_is_the_jsonl_manifest_is_refused(cli, fake_engine, inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    manifest = out / "m.report.json"  # read as JSON Lines
    manifest.write_text(json.dumps({"image": str(inputs["face"]), "audio": str(inputs["a"]), "output": "m.mp4"}) + "\n")
    result = batch(cli, manifest, out, "--validate-only")
    assert result.code == 2, result.output
    assert f"line 1, column output: {manifest} (the report of this row) is the manifest" in result.stderr
    assert "1 of 1 row is invalid" in result.stderr


def test_reference_videos_and_model_files_count_as_inputs(fake_engine, inputs, tmp_path, monkeypatch):
    import fake_lipsync_engine

    from lipsync_tool.batch import ManifestError, plan_batch

    out = tmp_path / "out"
    out.mkdir()
    ref = out / "pose.mp4"
    shutil.copyfile(inputs["a"], ref)
    monkeypatch.setattr(fake_lipsync_engine.FakeEngine, "staged_refs", lambda self, options: {"ref_pose": ref})
    manifest = write_csv(tmp_path / "jobs.csv", ["image", "audio", "output"], [[inputs["face"], inputs["a"], "pose.mp4"], [inputs["face"], inputs["b"], "b.mp4"]])
    with pytest.raises(ManifestError) as info:
        plan_batch(manifest, out, {"overwrite": True}, engine="fake")
    assert [str(p) for p in info.value.problems] == [f"line 2, column output: {ref} is the ref pose file of line 2; refusing to overwrite it"]


def test_rows_never_write_each_others_files_or_the_batch_report(cli, fake_engine, inputs, tmp_path, trace):
    out = tmp_path / "out"
    face, a = inputs["face"], inputs["a"]
    manifest = write_csv(
        tmp_path / "jobs.csv",
        ["image", "audio", "output", "hls"],
        [
            [face, a, "a.mp4", ""],  # line 2
            [face, a, "b.mp4", "batch_report.jsonl"],  # 3
            [face, a, "c.mp4", "streams"],  # 4
            [face, a, "streams/d.mp4", ""],  # 5
            [face, a, "e.mp4", "a.report.json"],  # 6
            [face, a, "f.mp4", "f"],  # 7: fine
        ],
    )
    result = batch(cli, manifest, out, "--validate-only")
    text = refused(
        result,
        "3 of 6 rows are invalid",
        f"line 3, column hls: {out / 'batch_report.jsonl'} (the hls folder of this row) is also the batch's own batch_report.jsonl",
        f"line 5, column output: {out / 'streams' / 'd.mp4'} is inside the hls folder of line 4",
        f"line 6, column hls: {out / 'a.report.json'} (the hls folder of this row) is also the report of line 2",
    )
    for line in (2, 4, 7):
        assert f"line {line}," not in text
    assert not trace.exists() and not out.exists()


# -- batch_report.jsonl ---------------------------------------------------------------------------


def test_batch_report_is_never_an_input_and_never_someone_elses_file(cli, fake_engine, inputs, tmp_path, trace):
    out = tmp_path / "out"
    out.mkdir()
    manifest = write_csv(tmp_path / "jobs.csv", ["image", "audio"], [[inputs["face"], inputs["a"]]])
    report = out / "batch_report.jsonl"

    report.symlink_to(manifest)
    linked = batch(cli, manifest, out, "--overwrite", "--validate-only")
    assert linked.code == 2, linked.output
    assert f"manifest: {report} is the manifest" in linked.stderr
    report.unlink()

    report.write_text("my own notes\n")
    foreign = batch(cli, manifest, out, "--validate-only")
    assert foreign.code == 2, foreign.output
    assert f"manifest: {report} exists and is not a report of an earlier batch" in foreign.stderr and "--overwrite" in foreign.stderr
    assert report.read_text() == "my own notes\n"
    assert batch(cli, manifest, out, "--validate-only", "--overwrite").code == 0
    assert not trace.exists()

    # Replaced with --overwrite; a rerun then rewrites the batch's own report without it.
    assert batch(cli, manifest, out, "--overwrite").code == 0
    assert json.loads(report.read_text().splitlines()[0])["status"] == "ok"
    again = batch(cli, manifest, out)
    assert again.code == 0, again.output
    assert json.loads(report.read_text().splitlines()[0])["status"] == "skipped"


# -- existing files the batch did not write ---------------------------------------------------------


def test_a_job_report_that_lipsync_tool_did_not_write_needs_overwrite(cli, fake_engine, inputs, tmp_path, trace):
    out = tmp_path / "out"
    out.mkdir()
    theirs = out / "face_a.report.json"
    theirs.write_text('{"mine": true}\n')
    manifest = write_csv(tmp_path / "jobs.csv", ["image", "audio"], [[inputs["face"], inputs["a"]]])
    refused = batch(cli, manifest, out, "--validate-only")
    assert refused.code == 2, refused.output
    assert f"line 2, column output: {theirs} (the report of face_a.mp4) exists and is not a lipsync-tool run report" in refused.stderr
    assert "--overwrite" in refused.stderr
    assert theirs.read_text() == '{"mine": true}\n'
    assert batch(cli, manifest, out, "--validate-only", "--overwrite").code == 0
    assert not trace.exists()


def test_an_existing_hls_playlist_is_caught_at_validation(cli, fake_engine, inputs, tmp_path, trace):
    out = tmp_path / "out"
    (out / "streams" / "a").mkdir(parents=True)
    (out / "streams" / "a" / "index.m3u8").write_text("#EXTM3U\n")
    manifest = write_csv(tmp_path / "jobs.csv", ["image", "audio", "hls"], [[inputs["face"], inputs["a"], "streams/a"]])
    refused = batch(cli, manifest, out, "--validate-only")
    assert refused.code == 2, refused.output
    assert f"line 2, column hls: {out / 'streams' / 'a'}: already holds index.m3u8" in refused.stderr and "--overwrite" in refused.stderr
    assert batch(cli, manifest, out, "--validate-only", "--overwrite").code == 0
    assert not trace.exists()


def test_a_row_hls_folder_in_a_new_sub_folder_is_written(cli, fake_engine, inputs, tmp_path):
    out = tmp_path / "out"
    manifest = write_csv(tmp_path / "jobs.csv", ["image", "audio", "hls"], [[inputs["face"], inputs["a"], "streams/a"]])
    result = batch(cli, manifest, out)
    assert result.code == 0, result.output
    assert (out / "streams" / "a" / "index.m3u8").is_file() and (out / "face_a.mp4").is_file()


# -- item 9: rows counted and numbered as the user sees them ----------------------------------------


def test_a_broken_jsonl_line_is_counted_among_the_rows(cli, fake_engine, inputs, tmp_path):
    good = json.dumps({"image": str(inputs["face"]), "audio": str(inputs["a"])})
    two = tmp_path / "two.jsonl"
    two.write_text(good + "\n{broken\n")
    result = batch(cli, two, tmp_path / "out", "--validate-only")
    assert result.code == 2, result.output
    assert "1 of 2 rows is invalid" in result.stderr and "line 2: is not valid JSON" in result.stderr

    # Blank lines and comments count as lines but not as rows; only "\n" ends a line
    # (U+2028 and form feeds may sit inside a JSON string).
    odd = json.dumps({"image": str(inputs["face"]), "audio": str(inputs["b"]), "output": "a\u2028b\x0cc.mp4"}, ensure_ascii=False)
    many = tmp_path / "many.jsonl"
    many.write_text(good + "\n\n# a comment\n" + odd + "\r\n[1]\n   \n{broken\n", encoding="utf-8")
    result = batch(cli, many, tmp_path / "out", "--validate-only")
    refused(result, "2 of 4 rows are invalid", "line 5: must be a JSON object, not list", "line 7: is not valid JSON", absent=("line 4", "line 1"))


def test_csv_rows_are_counted_and_numbered_as_an_editor_shows_them(cli, fake_engine, inputs, tmp_path):
    face, a = inputs["face"], inputs["a"]
    path = tmp_path / "jobs.csv"
    path.write_text(
        "image,audio,output\n"  # 1
        f'{face},{a},"two\nlines.mp4"\n'  # 2-3: one row
        "\n"  # 4
        "# a comment\n"  # 5
        f"{face},{a},x.mp4,extra\n"  # 6: too many values
        f"{face},,y.mp4\n"  # 7: no audio
        f'{face},{a},"never closed.mp4\n'  # 8: to the end of the file
        f"{face},{a},z.mp4\n"  # 9 (inside the open quote)
    )
    result = batch(cli, path, tmp_path / "out", "--validate-only")
    refused(
        result,
        "3 of 4 rows are invalid",
        "line 6: has 4 values but the header (line 1) names 3 columns",
        "line 7, column audio: is missing",
        "line 8: is not valid CSV (a quote opened in this row is never closed)",
        absent=("line 2", "line 3"),
    )

    # A problem with the header is not a bad row.
    header = write_csv(tmp_path / "header.csv", ["image", "audio", "audio"], [[face, a, a]])
    result = batch(cli, header, tmp_path / "out", "--validate-only")
    assert result.code == 2, result.output
    assert "the manifest is invalid" in result.stderr and "line 1, column audio: appears twice in the header" in result.stderr
    assert "of 1 row" not in result.stderr


def test_a_header_only_csv_has_no_jobs(cli, fake_engine, tmp_path):
    path = tmp_path / "jobs.csv"
    path.write_text("image,audio\n\n")
    result = batch(cli, path, tmp_path / "out", "--validate-only")
    assert result.code == 2, result.output
    assert "the manifest is invalid" in result.stderr and "manifest: has no jobs: only the header (line 1)" in result.stderr
