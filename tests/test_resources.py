"""Pinned clones and verified, resumable downloads, against real stand-ins:
a loopback HTTP server and local git repositories (no mocks of requests or git)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import git, spec_for
from httpserver import LoopbackServer
from lipsync_tool.engines.base import CheckpointSpec, RepoSpec
from lipsync_tool.errors import DependencyError, DownloadError, OfflineError, RegistryFileError, RepoError
from lipsync_tool.resources.cache import Cache, Stamp, verified_stamp
from lipsync_tool.resources.download import Downloader, download_action
from lipsync_tool.resources.repos import ensure_repo, head_commit

SIZE = 3 * 1024 * 1024 + 123


class FakeSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def server():
    with LoopbackServer() as s:
        yield s


@pytest.fixture
def blob() -> bytes:
    return os.urandom(SIZE)


def fetch(cache: Cache, spec: CheckpointSpec, downloader: Downloader | None = None):
    dl = downloader or Downloader(sleep=FakeSleep())
    dest = cache.checkpoint_path("eng", spec.name)
    return dl.ensure(spec, dest, cache.lock_path("ckpt", "eng", spec.name))


# -- downloads ----------------------------------------------------------------------------------


def test_fresh_download_is_verified_stamped_and_then_cached(server, cache, blob):
    route = server.add("/m.pth", blob)
    spec = spec_for(blob, server.url("/m.pth"))
    r = fetch(cache, spec)
    assert r.action == "downloaded" and r.path.read_bytes() == blob
    assert verified_stamp(r.path, spec.sha256) is not None
    assert len(route.requests) == 1
    again = fetch(cache, spec)
    assert again.action == "cached" and len(route.requests) == 1
    assert not Cache.partials(r.path)


def test_resume_after_a_cut_uses_range_and_transfers_less(server, cache, blob):
    cut = SIZE // 3
    route = server.add("/m.pth", blob, cut_after=cut)
    sleep = FakeSleep()
    r = fetch(cache, spec_for(blob, server.url("/m.pth")), Downloader(sleep=sleep))
    assert r.path.read_bytes() == blob
    assert len(route.requests) == 2
    assert route.requests[0]["range"] is None
    # Resumed from what reached the disk (a partly read chunk may be lost with the connection).
    resumed_at = int(route.requests[1]["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= cut
    second_request_bytes = route.bytes_sent - cut
    assert second_request_bytes == SIZE - resumed_at < SIZE
    assert sleep.calls == [1.0]


def test_wrong_bytes_are_deleted_and_the_next_mirror_is_used(server, cache, blob, caplog):
    bad = server.add("/bad.pth", blob, wrong=True)
    good = server.add("/good.pth", blob)
    spec = spec_for(blob, server.url("/bad.pth"), server.url("/good.pth"))
    r = fetch(cache, spec)
    assert r.url == server.url("/good.pth") and r.path.read_bytes() == blob
    assert len(bad.requests) == 1 and len(good.requests) == 1
    msg = " ".join(rec.getMessage() for rec in caplog.records)
    assert f"expected {SIZE} bytes, sha256 {spec.sha256}" in msg
    assert "was deleted" in msg and "next mirror" in msg and "--registry" in msg
    assert r.attempts == [(server.url("/bad.pth"), "size or sha256 mismatch")]


def test_404_403_move_on_and_5xx_is_retried_with_backoff(server, cache, blob):
    server.add("/gone.pth", blob, status=404)
    server.add("/denied.pth", blob, status=403)
    flaky = server.add("/flaky.pth", blob, fail_times=2)
    sleep = FakeSleep()
    spec = spec_for(blob, server.url("/gone.pth"), server.url("/denied.pth"), server.url("/flaky.pth"))
    r = fetch(cache, spec, Downloader(sleep=sleep))
    assert r.url == server.url("/flaky.pth")
    assert len(flaky.requests) == 3
    assert sleep.calls == [1.0, 2.0]
    assert [a[1] for a in r.attempts] == ["HTTP 404", "HTTP 403"]


def test_every_mirror_failing_names_the_file_and_urls(server, cache, blob):
    server.add("/a.pth", blob, status=404)
    server.add("/b.pth", blob, status=500)
    spec = spec_for(blob, server.url("/a.pth"), server.url("/b.pth"))
    with pytest.raises(DownloadError) as info:
        fetch(cache, spec, Downloader(sleep=FakeSleep(), retries=2))
    text = str(info.value)
    assert "model.pth" in text and server.url("/a.pth") in text and server.url("/b.pth") in text
    assert "HTTP 404" in text and "HTTP 500" in text
    assert not cache.checkpoint_path("eng", "model.pth").exists()


def test_interrupted_download_is_resumed_and_leaves_no_debris(server, cache, blob):
    dest = cache.checkpoint_path("eng", "model.pth")
    dest.parent.mkdir(parents=True)
    # What an earlier, killed process left: a good prefix, plus an older smaller one.
    (dest.parent / "model.pth.4242-abcdef.incomplete").write_bytes(blob[:1000])
    (dest.parent / "model.pth.4343-123456.incomplete").write_bytes(blob[:500_000])
    route = server.add("/m.pth", blob)
    r = fetch(cache, spec_for(blob, server.url("/m.pth")))
    assert r.path.read_bytes() == blob
    assert route.requests[0]["range"] == "bytes=500000-"
    assert route.bytes_sent == SIZE - 500_000
    assert list(dest.parent.glob("*.incomplete")) == []


def test_a_corrupt_partial_is_caught_by_the_hash(server, cache, blob):
    dest = cache.checkpoint_path("eng", "model.pth")
    dest.parent.mkdir(parents=True)
    (dest.parent / "model.pth.1-aaaaaa.incomplete").write_bytes(b"\x00" * 1000)
    first = server.add("/m.pth", blob)
    second = server.add("/m2.pth", blob)
    r = fetch(cache, spec_for(blob, server.url("/m.pth"), server.url("/m2.pth")))
    # The bad leftover is blamed, not the mirror: the same mirror again, from byte 0.
    assert r.path.read_bytes() == blob and r.url == server.url("/m.pth")
    assert [q["range"] for q in first.requests] == ["bytes=1000-", None] and second.requests == []


def test_two_processes_download_one_file_once(server, tmp_path, blob):
    route = server.add("/m.pth", blob, delay=1.5)
    spec = spec_for(blob, server.url("/m.pth"))
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from lipsync_tool.engines.base import CheckpointSpec
        from lipsync_tool.resources.cache import Cache
        from lipsync_tool.resources.download import Downloader
        spec = CheckpointSpec(name="model.pth", urls=({spec.urls[0]!r},), size={spec.size}, sha256={spec.sha256!r}, dest="x")
        cache = Cache(Path({str(tmp_path / "shared")!r}))
        r = Downloader().ensure(spec, cache.checkpoint_path("eng", "model.pth"), cache.lock_path("ckpt", "eng", "model.pth"))
        print(r.action)
        """
    )
    env = {**os.environ, "NO_PROXY": "127.0.0.1"}
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    actions = sorted(out.strip() for out, _ in results)
    assert actions == ["cached", "downloaded"]
    assert len(route.requests) == 1
    path = Cache(tmp_path / "shared").checkpoint_path("eng", "model.pth")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256


def test_unusable_mirror_urls_are_skipped(server, cache, blob):
    server.add("/m.pth", blob)
    r = fetch(cache, spec_for(blob, "ftp://example.invalid/m.pth", "http://[bad", server.url("/m.pth")))
    assert r.url == server.url("/m.pth")
    assert [a[1].split(":")[0] for a in r.attempts] == ["InvalidSchema", "InvalidURL"]


def test_offline_never_touches_the_network_and_keeps_an_unverified_file(server, cache, blob, tmp_path):
    route = server.add("/m.pth", blob)
    spec = spec_for(blob, server.url("/m.pth"))
    with pytest.raises(OfflineError):
        fetch(cache, spec, Downloader(offline=True))
    dest = cache.checkpoint_path("eng", "model.pth")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(blob[:-1] + b"x")  # a damaged copy, carried to an air-gapped machine
    with pytest.raises(OfflineError) as info:
        fetch(cache, spec, Downloader(offline=True))
    assert "does not match the registry" in str(info.value)
    assert dest.exists() and route.requests == []
    dest.write_bytes(blob)  # a good copy verifies locally
    assert fetch(cache, spec, Downloader(offline=True)).action == "verified"
    local = tmp_path / "mirror.pth"
    local.write_bytes(other_blob := os.urandom(SIZE))  # other bytes: a verified twin in the cache would be linked instead
    other = spec_for(other_blob, server.url("/m.pth"), local.as_uri(), name="other.pth")
    assert fetch(cache, other, Downloader(offline=True)).url == local.as_uri()
    assert route.requests == []


def test_file_url_mirrors_work(cache, tmp_path, blob):
    src = tmp_path / "mirror" / "m.pth"
    src.parent.mkdir()
    src.write_bytes(blob)
    r = fetch(cache, spec_for(blob, (tmp_path / "nope.pth").as_uri(), src.as_uri()))
    assert r.path.read_bytes() == blob


def test_download_action_decides_without_io_of_the_network(cache, tmp_path):
    dest = cache.checkpoint_path("eng", "x.bin")
    dest.parent.mkdir(parents=True)
    assert download_action(dest, "a" * 64) == "fetch"
    dest.write_bytes(b"hello")
    assert download_action(dest, "a" * 64) == "verify"
    sha = hashlib.sha256(b"hello").hexdigest()
    Cache.stamp_path(dest).write_text(Stamp.of(dest, sha).dumps())
    assert download_action(dest, sha) == "use"
    assert download_action(dest, "b" * 64) == "verify"  # the registry now wants other bytes
    dest.write_bytes(b"HELLO")  # size same, mtime changed: the stamp no longer vouches
    os.utime(dest, ns=(1, 1))
    assert download_action(dest, sha) == "verify"


# -- clones ----------------------------------------------------------------------------------------


def repo_paths(cache: Cache, spec: RepoSpec):
    return cache.repo_dir("eng", spec.commit), cache.repo_ready("eng", spec.commit), cache.lock_path("repo", "eng")


def test_clone_checks_out_the_pinned_commit(fake_upstream, cache):
    spec = RepoSpec(url=fake_upstream.url, commit=fake_upstream.first)
    target = ensure_repo(spec, *repo_paths(cache, spec), entry_script="inference.py")
    assert head_commit(target) == fake_upstream.first
    assert (target / "inference.py").is_file() and not (target / "NEWER.txt").exists()
    assert json.loads(cache.repo_ready("eng", spec.commit).read_text())["commit"] == fake_upstream.first
    assert not list(target.parent.glob(".staging-*"))


def test_a_commit_missing_from_the_repo_is_a_clear_error(fake_upstream, cache):
    spec = RepoSpec(url=fake_upstream.url, commit="1" * 40)
    with pytest.raises(RepoError) as info:
        ensure_repo(spec, *repo_paths(cache, spec))
    assert f"commit {'1' * 40} is not in {fake_upstream.url}" in str(info.value)
    assert info.value.hint
    assert not cache.repo_dir("eng", spec.commit).exists()
    assert not list(cache.repo_root("eng").glob(".staging-*"))


def test_partial_or_corrupt_clone_is_redone(fake_upstream, cache):
    spec = RepoSpec(url=fake_upstream.url, commit=fake_upstream.first)
    target = ensure_repo(spec, *repo_paths(cache, spec), entry_script="inference.py")
    (target / "inference.py").unlink()  # corrupt: entry script gone
    ensure_repo(spec, *repo_paths(cache, spec), entry_script="inference.py")
    assert (target / "inference.py").is_file()
    cache.repo_ready("eng", spec.commit).unlink()  # partial: no ready stamp
    (target / "marker").write_text("from the broken clone")
    ensure_repo(spec, *repo_paths(cache, spec), entry_script="inference.py")
    assert not (target / "marker").exists()


def test_missing_git_is_a_clear_error(fake_upstream, cache, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    spec = RepoSpec(url=fake_upstream.url, commit=fake_upstream.first)
    with pytest.raises(DependencyError) as info:
        ensure_repo(spec, *repo_paths(cache, spec))
    assert "git is not installed" in str(info.value) and "Install git" in info.value.hint


def test_unreachable_repository_is_a_clear_error(cache, tmp_path):
    spec = RepoSpec(url=(tmp_path / "nowhere.git").as_uri(), commit="2" * 40)
    with pytest.raises(RepoError) as info:
        ensure_repo(spec, *repo_paths(cache, spec))
    assert "git failed" in str(info.value)


# -- the CLI over the resources: setup, offline, registry override, cache commands --------------------


@pytest.fixture
def served_ckpt(fake_engine, server, monkeypatch):
    """The fake engine's checkpoint served over loopback HTTP instead of file://."""
    data = fake_engine.ckpt.read_bytes()
    route = server.add("/fake.ckpt", data)
    monkeypatch.setenv("FAKE_ENGINE_CKPT_URLS", server.url("/fake.ckpt"))
    return route


def test_setup_prefetches_and_prints_a_summary(served_ckpt, cli, fake_engine):
    r = cli("setup", "--engine", "fake")
    assert r.code == 0, r.output
    assert "Fake is ready." in r.stdout and fake_engine.upstream.first in r.stdout
    assert "fake.ckpt" in r.stdout and "downloaded" in r.stdout
    assert "Licence notice (fake)" in r.stderr
    r2 = cli("setup", "--engine", "fake")
    assert "cached" in r2.stdout and "Licence notice" not in r2.stderr
    assert len(served_ckpt.requests) == 1


def test_every_mirror_failing_exits_1_naming_file_and_urls(fake_engine, server, cli, monkeypatch):
    server.add("/x.ckpt", b"", status=404)
    server.add("/y.ckpt", b"", status=403)
    monkeypatch.setenv("FAKE_ENGINE_CKPT_URLS", f"{server.url('/x.ckpt')} {server.url('/y.ckpt')}")
    r = cli("setup", "--engine", "fake")
    assert r.code == 1
    assert "Error: fake.ckpt: could not download from any mirror" in r.stderr
    assert server.url("/x.ckpt") in r.stderr and server.url("/y.ckpt") in r.stderr
    assert "Traceback" not in r.stderr


def test_offline_with_a_file_missing_exits_2_listing_it(served_ckpt, cli, media, tmp_path):
    r = cli(media.portrait(), media.audio(seconds=0.6), tmp_path / "o.mp4", "--engine", "fake", "--offline")
    assert r.code == 2
    assert "offline mode" in r.stderr and "fake.ckpt" in r.stderr and "repository" in r.stderr
    assert "lipsync-tool setup --engine fake" in r.stderr
    assert served_ckpt.requests == []


def test_offline_works_once_everything_is_cached(served_ckpt, cli, media, tmp_path, monkeypatch):
    assert cli("setup", "--engine", "fake").code == 0
    monkeypatch.setenv("LIPSYNC_TOOL_OFFLINE", "1")
    r = cli(media.portrait(), media.audio(seconds=0.6), tmp_path / "o.mp4", "--engine", "fake", "--no-upscale")
    assert r.code == 0, r.output
    assert len(served_ckpt.requests) == 1


def test_corrupted_cached_file_is_reported_by_verify_and_fetched_again(served_ckpt, cli, fake_engine):
    assert cli("setup", "--engine", "fake").code == 0
    path = Path(os.environ["LIPSYNC_TOOL_CACHE"]) / "v1" / "checkpoints" / "fake" / "fake.ckpt"
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # bit rot: size and mtime unchanged
    r = cli("cache", "verify")
    assert r.code == 1
    assert "CORRUPT  fake/fake.ckpt" in r.stdout
    r = cli("setup", "--engine", "fake")
    assert r.code == 0 and "downloaded" in r.stdout
    assert len(served_ckpt.requests) == 2
    assert hashlib.sha256(path.read_bytes()).hexdigest() == fake_engine.sha256
    assert cli("cache", "verify").code == 0


def test_registry_override_is_honoured_for_repo_and_checkpoints(fake_engine, server, cli, tmp_path, media):
    mirror = tmp_path / "mirror.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(fake_engine.upstream.path), str(mirror)], check=True)
    other = os.urandom(5000)
    route = server.add("/other.ckpt", other)
    reg = tmp_path / "registry.toml"
    reg.write_text(
        textwrap.dedent(
            f"""
            [fake]
            repo_url = "{mirror.as_uri()}"
            commit = "{fake_engine.upstream.second}"

            [fake.checkpoints."fake.ckpt"]
            urls = ["{server.url('/other.ckpt')}"]
            sha256 = "{hashlib.sha256(other).hexdigest()}"
            size = {len(other)}
            """
        )
    )
    report = tmp_path / "r.json"
    r = cli(media.portrait(), media.audio(seconds=0.6), tmp_path / "o.mp4", "--engine", "fake", "--registry", reg, "--no-upscale", "--report", report)
    assert r.code == 0, r.output
    data = json.loads(report.read_text())
    assert data["engine"]["repo"] == mirror.as_uri()
    assert data["engine"]["commit"] == fake_engine.upstream.second
    assert data["engine"]["checkpoints"][0]["sha256"] == hashlib.sha256(other).hexdigest()
    assert len(route.requests) == 1


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("[fake\nrepo_url = 1", "is not valid TOML"),
        ('[nosuch]\nrepo_url = "x"', "[nosuch]: unknown engine"),
        ('[fake.checkpoints."other.pth"]\nsize = 1', 'fake.checkpoints."other.pth": unknown checkpoint'),
        ('[fake]\ncommit = "abc"', "fake.commit: must be a full 40-character"),
        ('[fake.checkpoints."fake.ckpt"]\nsha256 = "xyz"', 'fake.checkpoints."fake.ckpt".sha256: must be 64 hex digits'),
        ('[fake]\nbranch = "main"', "fake.branch: unknown key"),
    ],
)
def test_bad_registry_file_is_a_usage_error_naming_file_and_key(fake_engine, cli, tmp_path, content, needle):
    reg = tmp_path / "bad.toml"
    reg.write_text(content)
    r = cli("setup", "--engine", "fake", "--registry", reg)
    assert r.code == 2, r.output
    assert str(reg) in r.stderr and needle in r.stderr


def test_registry_loader_raises_typed_error(fake_engine, tmp_path):
    from lipsync_tool.engines import get_engine
    from lipsync_tool.resources.registry import load_registry

    with pytest.raises(RegistryFileError):
        load_registry(get_engine("fake"), tmp_path / "missing.toml")


def test_cache_info_and_clean(served_ckpt, cli, fake_engine):
    assert cli("setup", "--engine", "fake").code == 0
    ckdir = Path(os.environ["LIPSYNC_TOOL_CACHE"]) / "v1" / "checkpoints" / "fake"
    (ckdir / "fake.ckpt.77-abcdef.incomplete").write_bytes(b"x" * 100)
    r = cli("cache", "info")
    assert r.code == 0
    assert "fake:" in r.stdout and "ready" in r.stdout and "partial" in r.stdout
    r = cli("cache", "clean", "--partial-only")
    assert r.code == 0 and not list(ckdir.glob("*.incomplete")) and (ckdir / "fake.ckpt").exists()
    r = cli("cache", "clean", "--engine", "fake")
    assert r.code == 0 and not ckdir.exists()


def test_engines_command_lists_pins_and_readiness(served_ckpt, cli, fake_engine):
    r = cli("engines")
    assert r.code == 0
    assert "sadtalker" in r.stdout and "cd4c0465ae0b54a6f85af57f5c65fec9fe23e7f8" in r.stdout
    assert "wav2lip" in r.stdout and "5c90fa9b4a2c2a37d0b4ebf7633ac41534eb9941" in r.stdout
    assert "fake" in r.stdout and "not ready" in r.stdout
    cli("setup", "--engine", "fake")
    line = next(ln for ln in cli("engines").stdout.splitlines() if ln.startswith("fake"))
    assert line.endswith("ready") and "not ready" not in line


def test_users_own_checkpoint_of_unknown_hash_is_used_with_a_warning(tmp_path, caplog):
    from lipsync_tool.resources.managers import Wav2LipResources

    mine = tmp_path / "finetuned.pth"
    mine.write_bytes(b"my weights")
    res = Wav2LipResources(tmp_path / "cache")
    f = res.user_file("checkpoints/user_model.pth", mine)
    assert f.sha256 == hashlib.sha256(b"my weights").hexdigest() and f.source == "user" and not f.known
    assert "not in the registry" in caplog.text
    # A second look is served from the stamp, not by hashing again.
    stamp = json.loads(res.cache.user_stamp(mine).read_text())
    assert stamp["sha256"] == f.sha256


def test_only_what_the_options_need_is_required():
    from lipsync_tool.engines import get_engine, make_options

    st = get_engine("sadtalker")
    names = lambda o, r=256: sorted(c.name for c in st.required_checkpoints(make_options(st, {**o, "resolution": r})))
    assert names({}) == ["SadTalker_V0.0.2_256.safetensors", "alignment_WFLW_4HG.pth", "detection_Resnet50_Final.pth", "mapping_00229-model.pth.tar"]
    assert "SadTalker_V0.0.2_512.safetensors" in names({}, 512) and "SadTalker_V0.0.2_256.safetensors" not in names({}, 512)
    assert "mapping_00109-model.pth.tar" in names({"preprocess": "full"}) and "mapping_00229-model.pth.tar" not in names({"preprocess": "extfull"})
    assert {"GFPGANv1.4.pth", "parsing_parsenet.pth"} <= set(names({"enhancer": "gfpgan"}))
    assert "GFPGANv1.4.pth" not in names({})
    w2l = get_engine("wav2lip")
    wn = lambda o: sorted(c.name for c in w2l.required_checkpoints(make_options(w2l, o)))
    assert wn({}) == ["s3fd.pth", "wav2lip_gan.pth"]
    assert wn({"wav2lip_checkpoint": "wav2lip"}) == ["s3fd.pth", "wav2lip.pth"]
    assert wn({"wav2lip_box": (1, 2, 30, 40)}) == ["wav2lip_gan.pth"]
    assert wn({"wav2lip_checkpoint": "/models/mine.pth"}) == ["s3fd.pth"]


def test_builtin_registry_is_complete_and_well_formed():
    from lipsync_tool.engines import get_engine

    expected = {
        "sadtalker": {
            "SadTalker_V0.0.2_256.safetensors", "SadTalker_V0.0.2_512.safetensors", "mapping_00109-model.pth.tar", "mapping_00229-model.pth.tar",
            "alignment_WFLW_4HG.pth", "detection_Resnet50_Final.pth", "GFPGANv1.4.pth", "parsing_parsenet.pth",
        },
        "wav2lip": {"wav2lip.pth", "wav2lip_gan.pth", "s3fd.pth"},
    }  # fmt: skip
    for engine, names in expected.items():
        specs = {c.name: c for c in get_engine(engine).checkpoints}
        assert names <= set(specs)
        for c in specs.values():
            assert len(c.sha256) == 64 and c.size > 0 and c.urls
            # GitHub releases first, then Hugging Face
            hosts = ["github" if "github.com" in u else "hf" if "huggingface.co" in u else "other" for u in c.urls]
            assert hosts.index("hf") > hosts.index("github") if "github" in hosts and "hf" in hosts else True, c.name
    sad = {c.name: c for c in get_engine("sadtalker").checkpoints}
    assert sad["SadTalker_V0.0.2_256.safetensors"].size == sad["SadTalker_V0.0.2_512.safetensors"].size
    assert sad["SadTalker_V0.0.2_256.safetensors"].sha256 != sad["SadTalker_V0.0.2_512.safetensors"].sha256


def test_clone_tree_is_never_written_by_a_run(fake_engine, cli, media, tmp_path):
    for i in range(2):
        assert cli(media.portrait(), media.audio(seconds=0.6), tmp_path / f"o{i}.mp4", "--engine", "fake", "--no-upscale").code == 0
    clone = Path(os.environ["LIPSYNC_TOOL_CACHE"]) / "v1" / "repos" / "fake" / fake_engine.upstream.first
    assert git("status", "--porcelain", "--untracked-files=all", "--ignored", cwd=clone) == ""


def test_offline_error_type_lists_missing(tmp_path):
    from lipsync_tool.engines import get_engine, make_options
    from lipsync_tool.resources.managers import Wav2LipResources

    res = Wav2LipResources(tmp_path / "c", offline=True)
    with pytest.raises(OfflineError) as info:
        res.ensure(make_options(get_engine("wav2lip"), {}))
    assert {"repository", "wav2lip_gan.pth", "s3fd.pth"} <= {m.split(" ")[0] for m in info.value.missing} | {info.value.missing[0].split(" ")[0]}
    assert any("wav2lip_gan.pth" in m for m in info.value.missing) and any("s3fd.pth" in m for m in info.value.missing)


def test_cache_layout_is_documented():
    from lipsync_tool.resources import cache as cache_module

    doc = cache_module.__doc__
    for piece in ("v1/", "repos/<engine>/", "<commit>.ready", ".incomplete", ".stamp", "locks/"):
        assert piece in doc


def test_cache_clean_skips_an_entry_in_use(served_ckpt, cli, fake_engine):
    from filelock import FileLock

    assert cli("setup", "--engine", "fake").code == 0
    cache = Cache(Path(os.environ["LIPSYNC_TOOL_CACHE"]))
    with FileLock(str(cache.lock_path("ckpt", "fake", "fake.ckpt"))):
        r = cli("cache", "clean", "--engine", "fake")
    assert r.code == 0 and "skipped fake/fake.ckpt: in use" in r.stdout
    assert cache.checkpoint_path("fake", "fake.ckpt").is_file()
    assert not cache.repo_root("fake").exists()  # the clone was not in use


# -- one verified file, several cache entries -------------------------------------------------------


def test_a_verified_file_of_another_entry_is_linked_not_downloaded(server, cache, blob):
    route = server.add("/g.pth", blob)
    spec = spec_for(blob, server.url("/g.pth"))
    first = Downloader(sleep=FakeSleep()).ensure(spec, cache.checkpoint_path("sadtalker", "GFPGANv1.4.pth"), cache.lock_path("ckpt", "sadtalker", "g"))
    assert first.action == "downloaded" and len(route.requests) == 1
    # Another engine (or a component, under another name) needs the same bytes: linked, stamped, no request.
    dest = cache.checkpoint_path("wav2lip", "GFPGANv1.4.pth")
    shared = Downloader(sleep=FakeSleep(), offline=True).ensure(spec, dest, cache.lock_path("ckpt", "wav2lip", "g"))
    assert shared.action == "shared" and shared.path == dest and len(route.requests) == 1
    assert dest.read_bytes() == blob and dest.stat().st_ino == first.path.stat().st_ino
    assert verified_stamp(dest, spec.sha256) is not None
    assert Downloader(sleep=FakeSleep()).ensure(spec, dest, cache.lock_path("ckpt", "wav2lip", "g")).action == "cached"
    # Removing one entry leaves the other intact.
    first.path.unlink()
    assert dest.read_bytes() == blob and verified_stamp(dest, spec.sha256) is not None


def test_a_twin_that_no_longer_matches_its_stamp_or_the_sha256_is_not_shared(server, cache, blob):
    route = server.add("/g.pth", blob)
    spec = spec_for(blob, server.url("/g.pth"))
    twin = cache.checkpoint_path("sadtalker", "g.pth")
    Downloader(sleep=FakeSleep()).ensure(spec, twin, cache.lock_path("ckpt", "sadtalker", "g"))
    with open(twin, "r+b") as f:  # damaged after it was verified: its stamp no longer matches
        f.write(b"X")
    os.utime(twin, ns=(1, 1))
    other = cache.checkpoint_path("wav2lip", "g.pth")
    with pytest.raises(OfflineError):
        Downloader(sleep=FakeSleep(), offline=True).ensure(spec, other, cache.lock_path("ckpt", "wav2lip", "g"))
    r = Downloader(sleep=FakeSleep()).ensure(spec, other, cache.lock_path("ckpt", "wav2lip", "g"))
    assert r.action == "downloaded" and len(route.requests) == 2 and other.read_bytes() == blob
    # same size, another sha256: never a twin
    different = spec_for(os.urandom(SIZE), server.url("/g.pth"))
    from lipsync_tool.resources.cache import verified_twin

    assert verified_twin(cache.checkpoint_path("third", "g.pth"), different.sha256, different.size) is None
    assert verified_twin(cache.checkpoint_path("third", "g.pth"), spec.sha256, spec.size) == other


def test_an_offline_run_links_the_same_bytes_from_another_cache_entry(served_ckpt, cli, media, tmp_path, monkeypatch):
    assert cli("setup", "--engine", "fake").code == 0
    base = Path(os.environ["LIPSYNC_TOOL_CACHE"]) / "v1" / "checkpoints"
    (base / "other").mkdir()
    for name in ("fake.ckpt", "fake.ckpt.stamp"):  # the same verified bytes, kept for another engine under another name
        os.replace(base / "fake" / name, base / "other" / name.replace("fake.ckpt", "renamed.bin"))
    monkeypatch.setenv("LIPSYNC_TOOL_OFFLINE", "1")
    r = cli(media.portrait(), media.audio(seconds=0.6), tmp_path / "o.mp4", "--engine", "fake", "--no-upscale")
    assert r.code == 0, r.output
    assert len(served_ckpt.requests) == 1  # setup's download only
    assert (base / "fake" / "fake.ckpt").stat().st_ino == (base / "other" / "renamed.bin").stat().st_ino


def test_an_interrupted_share_leaves_nothing_behind(server, cache, blob, monkeypatch):
    from lipsync_tool.resources import download

    spec = spec_for(blob, server.url("/g.pth"))
    server.add("/g.pth", blob)
    Downloader(sleep=FakeSleep()).ensure(spec, cache.checkpoint_path("a", "g.pth"), cache.lock_path("ckpt", "a", "g"))

    def interrupted(src, dst):
        Path(dst).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(download.os, "link", lambda src, dst: (_ for _ in ()).throw(OSError("cross-device")))
    monkeypatch.setattr(download.shutil, "copyfile", interrupted)
    dest = cache.checkpoint_path("b", "g.pth")
    with pytest.raises(KeyboardInterrupt):
        Downloader(sleep=FakeSleep(), offline=True).ensure(spec, dest, cache.lock_path("ckpt", "b", "g"))
    assert sorted(p.name for p in dest.parent.iterdir()) == []  # no entry, no stamp, no .share
