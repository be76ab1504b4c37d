"""Pinned upstream clones, with GitPython.

A clone is made in a staging dir, checked out at the pinned commit, verified
(HEAD is the commit), then renamed into place and stamped ``<commit>.ready``.
A directory without the stamp, or whose HEAD is not the commit, is a partial
or corrupt clone and is made again.  The fast path reads ``.git/HEAD`` and
needs neither git nor GitPython.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from pathlib import Path

from ..engines.base import RepoSpec
from ..errors import DependencyError, RepoError
from .cache import atomic_write_text, rmtree_force

log = logging.getLogger(__name__)


def head_commit(repo_dir: Path) -> str | None:
    """The commit a checkout's HEAD points at, read from ``.git`` directly."""
    git_dir = repo_dir / ".git"
    try:
        head = (git_dir / "HEAD").read_text().strip()
    except OSError:
        return None
    if head.startswith("ref: "):
        ref = head[5:]
        try:
            return (git_dir / ref).read_text().strip()
        except OSError:
            packed = git_dir / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split(" ", 1)[0]
            return None
    return head


def repo_state(target: Path, ready: Path, spec: RepoSpec, entry_script: str) -> str:
    """Decide, without git: ``ready``, ``missing`` or ``broken``."""
    if not target.exists():
        return "missing"
    try:
        stamp = json.loads(ready.read_text())
    except (OSError, ValueError):
        return "broken"
    if stamp.get("commit") != spec.commit or head_commit(target) != spec.commit:
        return "broken"
    if entry_script and not (target / entry_script).is_file():
        return "broken"
    return "ready"


def ensure_repo(spec: RepoSpec, target: Path, ready: Path, lock_path: Path, *, entry_script: str = "", offline: bool = False) -> Path:
    """Make *target* a checkout of *spec* (clone if needed)."""
    from filelock import FileLock

    if repo_state(target, ready, spec, entry_script) == "ready":
        return target
    with FileLock(str(lock_path)):
        state = repo_state(target, ready, spec, entry_script)
        if state == "ready":
            return target
        if state == "broken":
            log.warning("the cached clone %s is partial or corrupt; cloning it again", target)
            ready.unlink(missing_ok=True)
            rmtree_force(target)
        if offline:
            from ..errors import OfflineError

            raise OfflineError([f"repository {spec.url} at {spec.commit}"], hint="Run 'lipsync-tool setup' once with network access, or use --registry with a local repo_url.")
        _clone(spec, target, entry_script)
        atomic_write_text(ready, json.dumps({"commit": spec.commit, "url": spec.url, "time": time.time()}))
    return target


def _git():
    if shutil.which("git") is None:
        raise DependencyError("git is not installed or not on PATH", subject="git", hint="Install git (e.g. apt-get install git) and try again.")
    try:
        import git
    except ImportError as exc:  # GitPython is a core dependency
        raise DependencyError(f"GitPython cannot be imported ({exc})", subject="git") from None
    return git


def _clone(spec: RepoSpec, target: Path, entry_script: str) -> None:
    git = _git()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".staging-{os.getpid()}-{random.randrange(16**6):06x}"
    env = {"GIT_TERMINAL_PROMPT": "0", "GIT_LFS_SKIP_SMUDGE": "1"}
    try:
        repo = git.Repo.init(staging)
        with repo.git.custom_environment(**env):
            repo.create_remote("origin", spec.url)
            if not _fetch_commit(repo, spec):
                _fetch_all(repo, spec)
            try:
                repo.commit(spec.commit)
            except (ValueError, git.BadName, git.GitCommandError):
                raise RepoError(
                    f"commit {spec.commit} is not in {spec.url}",
                    subject="repository",
                    hint="The pinned commit may have been removed upstream, or a registry override points at the wrong repository or commit.",
                ) from None
            if spec.sparse_exclude:
                repo.git.sparse_checkout("set", "--no-cone", "/*", *[f"!/{p}" for p in spec.sparse_exclude])
            repo.git.checkout("--detach", "--quiet", spec.commit)
        got = repo.head.commit.hexsha
        if got != spec.commit:
            raise RepoError(f"checked out {got}, expected {spec.commit}", subject=str(spec.url))
        if entry_script and not (staging / entry_script).is_file():
            raise RepoError(f"{entry_script} is missing at commit {spec.commit}", subject=spec.url, hint="Is repo_url the right project?")
        repo.close()
        os.rename(staging, target)
        log.info("cloned %s at %s into %s", spec.url, spec.commit[:12], target)
    except git.GitCommandError as exc:
        raise RepoError(f"git failed: {_git_message(exc)}", subject=spec.url, hint="Check the network and that the URL is reachable, or use --registry with a mirror (file:// works).") from None
    finally:
        if staging.exists():
            rmtree_force(staging)


def _fetch_commit(repo, spec: RepoSpec) -> bool:
    """Fetch only the pinned commit (fast; GitHub allows it).  False if refused."""
    import git

    # With paths left out of the checkout, fetch no blobs up front: the sparse
    # checkout then fetches only the ones it needs (some copies lack the others).
    blobs = ["--filter=blob:none"] if spec.sparse_exclude else []
    try:
        repo.git.fetch("--depth", "1", "--no-tags", "--quiet", *blobs, "origin", spec.commit)
        return True
    except git.GitCommandError as exc:
        log.debug("shallow fetch of %s refused (%s); fetching everything", spec.commit, _git_message(exc))
        return False


def _fetch_all(repo, spec: RepoSpec) -> None:
    repo.git.fetch("--quiet", "--tags", "origin", "+refs/heads/*:refs/remotes/origin/*")


def _git_message(exc) -> str:
    text = (getattr(exc, "stderr", "") or str(exc)).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("stderr:")]
    return lines[-1].strip("'") if lines else str(exc)
