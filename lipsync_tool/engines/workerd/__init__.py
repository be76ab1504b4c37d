"""The warm worker's child side: code that runs in the engine's interpreter.

Everything here is standalone (stdlib, plus numpy and upstream's own modules
in the adapters): the engine's interpreter need not have lipsync-tool
installed.  :mod:`.main` is started as a script by
:class:`lipsync_tool.engines.worker.WorkerRunner`; it loads one *adapter* (a
file such as :mod:`.wav2lip_adapter`) that imports upstream's modules from the
pinned clone and renders jobs with them, keeping the models loaded between
jobs.  :mod:`.protocol` is the line protocol both sides speak.
"""
