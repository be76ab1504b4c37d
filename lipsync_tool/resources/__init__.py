"""Resource managers: pinned upstream clones and verified checkpoints in a shared cache."""

from .managers import EngineResources, Prepared, PreparedFile, Readiness, SadTalkerResources, Wav2LipResources, resources_for

__all__ = ["EngineResources", "Prepared", "PreparedFile", "Readiness", "SadTalkerResources", "Wav2LipResources", "resources_for"]
