"""Ray in the sweep tests stays on this machine's loopback interface: Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once,
when it is first imported, and with it on (Linux's default) its servers listen on every interface even when the node
address is 127.0.0.1. Set here, before any test module imports ray; inherited by the subprocesses the tests start.
Usage statistics off likewise."""

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
