"""``check_within``: a typed path is accepted only inside the allowed roots, after ``~``, ``..`` and symlinks are
resolved (the dashboard's folder inputs go through it when the dashboard is shared)."""

from __future__ import annotations

import os

import pytest

from workbench.errors import ConfigError
from workbench.validation import check_within


@pytest.fixture
def tree(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "reports" / "a").mkdir(parents=True)
    outside.mkdir()
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "inner").symlink_to(root / "reports", target_is_directory=True)
    return root, outside


def test_inside_paths_are_returned_resolved(tree):
    root, _ = tree
    assert check_within("dashboard", "reports folder", root / "reports" / "a", [root]) == (root / "reports" / "a").resolve()
    assert check_within("dashboard", "reports folder", str(root), [root]) == root.resolve()
    assert check_within("dashboard", "reports folder", root / "not-yet" / "x", [root]) == (root / "not-yet" / "x").resolve()
    assert check_within("dashboard", "reports folder", root / "inner" / "a", [root]) == (root / "reports" / "a").resolve()
    assert check_within("dashboard", "x", root / "reports" / ".." / "reports", [root]).name == "reports"


@pytest.mark.parametrize("escape", ["symlink", "dotdot", "absolute", "prefix", "no roots"])
def test_outside_paths_are_refused_naming_the_parameter_and_the_roots(tree, escape):
    root, outside = tree
    path, roots = {"symlink": (root / "escape" / "x", [root]),
                   "dotdot": (f"{root}{os.sep}reports{os.sep}..{os.sep}..{os.sep}outside", [root]),
                   "absolute": ("/etc", [root]),
                   "prefix": (f"{root}-sibling", [root]),  # shares the root's text prefix, not its folder
                   "no roots": (root / "reports", [])}[escape]
    with pytest.raises(ConfigError) as info:
        check_within("dashboard", "reports folder", path, roots)
    message = str(info.value)
    assert "\n" not in message and "dashboard(): parameter 'reports folder' must be a path inside the allowed roots" \
        in message
    assert (str(root.resolve()) in message) if roots else ("none configured" in message)
