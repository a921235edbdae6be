"""The dashboard accepts typed folders only inside its allowed roots (the working directory and the workbench cache by
default): the app tests' tiny models, reports and SAEs live in pytest's temporary folder, so it is allowed here besides the defaults —
for the whole session, so that module-scoped servers (test_browser) inherit it; tests of the roots themselves set or
clear ``WORKBENCH_APP_ROOTS`` again with ``monkeypatch``."""

from __future__ import annotations

import os

import pytest

from workbench.models.cache import cache_root


@pytest.fixture(scope="session", autouse=True)
def _app_roots_include_pytest_tmp(tmp_path_factory):
    patch = pytest.MonkeyPatch()
    roots = [os.getcwd(), str(cache_root()), str(tmp_path_factory.getbasetemp())]  # the defaults + pytest's
    patch.setenv("WORKBENCH_APP_ROOTS", os.pathsep.join(roots))
    yield
    patch.undo()
