"""pytest plugin of the GPU check (``-p pytest_absent``, loaded by run.py only): a test that fails because it imports
a package this machine lacks on purpose (``WORKBENCH_TEST_ABSENT``, comma-separated top-level names; the GPU image
has no sae-lens, streamlit, ... and the check does not carry them) is reported as skipped with that reason instead of
as a failure. Any other error, and any ModuleNotFoundError of a package not listed, still fails."""

from __future__ import annotations

import os

import pytest


def _absent() -> set[str]:
    return {m for m in os.environ.get("WORKBENCH_TEST_ABSENT", "").split(",") if m}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    excinfo = call.excinfo
    if excinfo is None or not excinfo.errisinstance(ModuleNotFoundError):
        return
    name = (getattr(excinfo.value, "name", None) or "").split(".")[0]
    if name in _absent():
        report = outcome.get_result()
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0,
                           f"Skipped: needs {name}, not installed on this machine (benchmarks/gpu/run.py)")
