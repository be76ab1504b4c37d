"""The SyncNet scorer's own process (torch, numpy, scipy, OpenCV): run as ``python main.py``.

Nothing here imports lipsync-tool, so it runs in an engine's interpreter as
well as in lipsync-tool's own (the ``score`` extra).  :mod:`lse` and
:mod:`mfcc` need only numpy (and scipy's DCT).
"""
