"""``lipsync-tool serve``'s parts (issue 13).  So far: :mod:`.store`, the
persistent job queue; the HTTP layer comes on top of it."""
