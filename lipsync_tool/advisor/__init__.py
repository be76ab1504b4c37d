"""The image advisor (``lipsync-tool check IMAGE``): is this portrait good for lip sync, and how to run it.

:func:`check_image` is the entry point (the CLI's and a pipeline's); it
imports no torch here: face-alignment runs in a child process
(:mod:`.landmarksd`).  :mod:`.geometry` estimates the head pose from the 68
landmarks and :mod:`.rules` turns the faces into warnings and a
recommendation.
"""

from .advisor import COMPONENT, Advice, advise, advisor_weights, check_image
from .geometry import Pose, estimate_pose
from .rules import Face, Recommendation

__all__ = ["COMPONENT", "Advice", "Face", "Pose", "Recommendation", "advise", "advisor_weights", "check_image", "estimate_pose"]
