"""The checkpoint registry: built-in entries plus a user override file.

The built-in entries are data on each engine class (``repo``,
``checkpoints``).  An override file (``--registry FILE`` or
``LIPSYNC_TOOL_REGISTRY``) is TOML; each field it names replaces the built-in
one and everything else is kept::

    [wav2lip]
    repo_url = "file:///srv/mirror/Wav2Lip.git"
    commit = "5c90fa9b4a2c2a37d0b4ebf7633ac41534eb9941"

    [wav2lip.checkpoints."wav2lip_gan.pth"]
    urls = ["https://mirror.example.org/w2l/wav2lip_gan.pth"]
    sha256 = "ca9ab7b7…"
    size = 435801865

Components (weights that belong to no engine, :data:`COMPONENTS`) take a
``checkpoints`` section only: ``[syncnet.checkpoints."syncnet_v2.model"]``.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engines.base import CheckpointSpec, Engine, RepoSpec
from ..errors import RegistryFileError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ENGINE_KEYS = {"repo_url", "commit", "checkpoints"}
COMPONENT_KEYS = {"checkpoints"}
CHECKPOINT_KEYS = {"urls", "sha256", "size"}

_OXFORD = "https://www.robots.ox.ac.uk/~vgg/software/lipsync/data/"
_LATENTSYNC = "https://huggingface.co/ByteDance/LatentSync-1.6/resolve/main/auxiliary/"
_FAN = "https://www.adrianbulat.com/downloads/python-fan/"
_PIPER_VOICES = "https://huggingface.co/rhasspy/piper-voices/resolve/v1.0.0/en/en_US/lessac/medium/"

# -- components: weights that are not an engine's (the SyncNet scorer's, the piper voice) ----

#: component → its checkpoints.  The Oxford VGG files are the ones syncnet_python's
#: ``download_model.sh`` fetches; LatentSync ships byte-identical copies.
COMPONENTS: dict[str, tuple[CheckpointSpec, ...]] = {
    "syncnet": (
        CheckpointSpec(
            name="syncnet_v2.model",
            urls=(_OXFORD + "syncnet_v2.model", _LATENTSYNC + "syncnet_v2.model"),
            size=54_573_114,
            sha256="961e8696f888fce4f3f3a6c3d5b3267cf5b343100b238e79b2659bff2c605442",
            dest="syncnet_v2.model",
            licence="SyncNet v2 (Chung & Zisserman, 2016), released with joonson/syncnet_python (MIT); for research use.",
        ),
        CheckpointSpec(
            name="sfd_face.pth",
            urls=(_OXFORD + "sfd_face.pth", _LATENTSYNC + "sfd_face.pth"),
            size=89_844_381,
            sha256="d54a87c2b7543b64729c9a25eafd188da15fd3f6e02f0ecec76ae1b30d86c491",
            dest="sfd_face.pth",
            licence="S3FD face detector weights in syncnet_python's format.",
        ),
    ),
    # The default neural voice of text input (lipsync_tool/tts/piper.py): the model and its config, which must sit side by side.
    # Sizes as several independent manifests record them beside these sha256s (the download checks both).
    "piper": tuple(
        CheckpointSpec(
            name=name,
            urls=(_PIPER_VOICES + name,),
            size=size,
            sha256=sha256,
            dest=name,
            licence="Piper voice en_US-lessac-medium (rhasspy/piper-voices), trained on the Lessac Blizzard 2013 data; see its MODEL_CARD for the terms.",
        )
        for name, size, sha256 in (
            ("en_US-lessac-medium.onnx", 63_201_294, "5efe09e69902187827af646e1a6e9d269dee769f9877d17b16b1b46eeaaf019f"),
            ("en_US-lessac-medium.onnx.json", 4_885, "efe19c417bed055f2d69908248c6ba650fa135bc868b0e6abb3da181dab690a0"),
        )
    ),
    # face-alignment's detector and 2D landmark network (``lipsync-tool check``, lipsync_tool/advisor/),
    # from face-alignment's own host.  The S3FD file is byte-identical to the talking-face engine's s3fd.pth.
    "face_alignment": (
        CheckpointSpec(
            name="s3fd-619a316812.pth",
            urls=(_FAN + "s3fd-619a316812.pth",),
            size=89_843_225,
            sha256="619a31681264d3f7f7fc7a16a42cbbe8b23f31a256f75a366e5a1bcd59b33543",
            dest="s3fd-619a316812.pth",
            licence="S3FD face detector (BSD-3-Clause), as face-alignment publishes it.",
            serves_url=_FAN + "s3fd-619a316812.pth",
        ),
        CheckpointSpec(
            name="2DFAN4-cd938726ad.zip",
            urls=(_FAN + "2DFAN4-cd938726ad.zip",),
            size=96_316_515,
            sha256="cd938726adb1f15f361263cce2db9cb820c42585fa8796ec72ce19107f369a46",
            dest="2DFAN4-cd938726ad.zip",
            licence="2D-FAN landmark network of face-alignment (BSD-3-Clause), as TorchScript.",
            serves_url=_FAN + "2DFAN4-cd938726ad.zip",
        ),
    ),
}


def component_specs(component: str, overrides: dict | None = None) -> dict[str, CheckpointSpec]:
    """The effective checkpoints of *component*: built-in, with an override section applied."""
    specs = {c.name: c for c in COMPONENTS[component]}
    for name, entry in ((overrides or {}).get("checkpoints") or {}).items():
        specs[name] = _replaced(specs[name], entry)
    return specs


@dataclass(frozen=True)
class EngineRegistry:
    engine: str
    repo: RepoSpec
    checkpoints: dict[str, CheckpointSpec]
    overridden: tuple[str, ...] = ()

    def spec(self, name: str) -> CheckpointSpec:
        return self.checkpoints[name]


def _fail(path: Path, key: str, problem: str) -> RegistryFileError:
    return RegistryFileError(f"{key}: {problem}", subject=path, hint="See 'Air-gapped and custom setups' in the README for the format.")


def _check_checkpoint(path: Path, where: str, name: str, entry: Any, known: set[str]) -> None:
    if name not in known:
        raise _fail(path, where, f"unknown checkpoint (known: {', '.join(sorted(known))})")
    if not isinstance(entry, dict):
        raise _fail(path, where, "must be a table")
    for key in entry:
        if key not in CHECKPOINT_KEYS:
            raise _fail(path, f"{where}.{key}", f"unknown key (allowed: {', '.join(sorted(CHECKPOINT_KEYS))})")
    if "urls" in entry and (not isinstance(entry["urls"], list) or not entry["urls"] or not all(isinstance(u, str) and u for u in entry["urls"])):
        raise _fail(path, f"{where}.urls", "must be a non-empty list of URL strings")
    if "sha256" in entry and (not isinstance(entry["sha256"], str) or not re.fullmatch(r"[0-9a-fA-F]{64}", entry["sha256"])):
        raise _fail(path, f"{where}.sha256", "must be 64 hex digits")
    if "size" in entry and (not isinstance(entry["size"], int) or isinstance(entry["size"], bool) or entry["size"] <= 0):
        raise _fail(path, f"{where}.size", "must be a positive integer (bytes)")


def _replaced(spec: CheckpointSpec, entry: dict[str, Any]) -> CheckpointSpec:
    fields: dict[str, Any] = {}
    if "urls" in entry:
        fields["urls"] = tuple(entry["urls"])
    if "sha256" in entry:
        fields["sha256"] = entry["sha256"].lower()
    if "size" in entry:
        fields["size"] = entry["size"]
    return dataclasses.replace(spec, **fields)


def read_override(path: Path, engines: dict[str, type[Engine]]) -> dict[str, Any]:
    """Parse and validate an override file; errors name the file and the key."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise RegistryFileError("no such file", subject=path) from None
    except OSError as exc:
        raise RegistryFileError(f"cannot be read ({exc.strerror})", subject=path) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RegistryFileError(f"is not valid TOML ({exc})", subject=path, hint="Check the quoting: checkpoint names with dots need quotes.") from None
    for engine, section in data.items():
        if engine not in engines and engine not in COMPONENTS:
            raise _fail(path, f"[{engine}]", f"unknown engine or component (known: {', '.join(sorted([*engines, *COMPONENTS]))})")
        if not isinstance(section, dict):
            raise _fail(path, engine, "must be a table")
        allowed = ENGINE_KEYS if engine in engines else COMPONENT_KEYS
        for key, value in section.items():
            if key not in allowed:
                raise _fail(path, f"{engine}.{key}", f"unknown key (allowed: {', '.join(sorted(allowed))})")
            if key == "repo_url" and (not isinstance(value, str) or not value.strip()):
                raise _fail(path, f"{engine}.repo_url", "must be a non-empty string")
            if key == "commit" and (not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{40}", value)):
                raise _fail(path, f"{engine}.commit", "must be a full 40-character lower-case commit sha")
        known = {c.name for c in (engines[engine].checkpoints if engine in engines else COMPONENTS[engine])}
        if not isinstance(section.get("checkpoints", {}), dict):
            raise _fail(path, f"{engine}.checkpoints", f'must be tables, e.g. [{engine}.checkpoints."{sorted(known)[0]}"]')
        for name, entry in (section.get("checkpoints") or {}).items():
            _check_checkpoint(path, f'{engine}.checkpoints."{name}"', name, entry, known)
    return data


def load_registry(engine: Engine | type[Engine], override: Path | None = None) -> EngineRegistry:
    """The effective registry of *engine*: built-in, with *override* applied."""
    from ..engines import engine_classes

    repo = engine.repo
    checkpoints = {c.name: c for c in engine.checkpoints}
    changed: list[str] = []
    if override is not None:
        section = read_override(override, engine_classes()).get(engine.name, {})
        if "repo_url" in section or "commit" in section:
            repo = dataclasses.replace(repo, url=section.get("repo_url", repo.url), commit=section.get("commit", repo.commit))
            changed.append("repo")
        for name, entry in (section.get("checkpoints") or {}).items():
            checkpoints[name] = _replaced(checkpoints[name], entry)
            changed.append(name)
    return EngineRegistry(engine=engine.name, repo=repo, checkpoints=checkpoints, overridden=tuple(changed))
