"""Resource managers: pinned upstream clones and verified checkpoints in a shared cache.

``managers.<DisplayName>Resources`` (e.g. the proof of concept's names) are made on demand for any registered engine.
"""

from .managers import EngineResources, Prepared, PreparedFile, Readiness, resources_for

__all__ = ["EngineResources", "Prepared", "PreparedFile", "Readiness", "resources_for"]
