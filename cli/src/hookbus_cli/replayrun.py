"""Moved to ``hookbus_api.replayrun`` (the operator API starts replays too); this name is
kept for callers of the old one and is the very same module."""

import sys

from hookbus_api import replayrun

sys.modules[__name__] = replayrun
