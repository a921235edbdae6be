"""Hypothesis profiles for the hostile-input suite (issue 21 point 3).

``ci`` (the default): sized for a 2-core CI machine — a few dozen generated inputs per test, derandomised (the same
inputs every run, so CI never flakes on a new draw), no example database written into the tree, and a per-example
deadline (a slow input is reported as a failure, not waited out). ``long``: 1000 inputs per test, random draws, for a
run on demand::

    HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests/hostile --hypothesis-show-statistics
"""

import os
from datetime import timedelta

from hypothesis import HealthCheck, settings

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]

settings.register_profile("ci", max_examples=40, deadline=timedelta(seconds=10), derandomize=True, database=None,
                          suppress_health_check=_SLOW_OK, print_blob=True)
settings.register_profile("long", max_examples=1000, deadline=timedelta(seconds=30), database=None,
                          suppress_health_check=_SLOW_OK, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
