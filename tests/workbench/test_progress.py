"""Progress bars reporting to a front end's callback, and cancelling work from it (hooks still released)."""

from __future__ import annotations

import pytest

from workbench.capture import capture
from workbench.capture.hooks import count_hooks
from workbench.progress import bar, reporting


def test_callback_sees_every_step_and_no_callback_outside_the_context():
    seen = []
    with reporting(lambda desc, done, total: seen.append((desc, done, total))):
        assert list(bar(range(3), desc="loop", disable=True)) == [0, 1, 2]  # disable only hides the terminal bar
        manual = bar(total=10, desc="manual")
        manual.update(4)
        manual.close()
    assert seen == [("loop", 0, 3), ("loop", 1, 3), ("loop", 2, 3), ("loop", 3, 3), ("manual", 0, 10),
                    ("manual", 4, 10)]
    seen.clear()
    assert list(bar(iter("ab"), disable=True)) == ["a", "b"]  # no total, no callback
    assert seen == []


class Cancelled(Exception):
    pass


def test_a_raising_callback_cancels_capture_and_its_hooks_are_removed(tiny_model):
    def cancel(desc, done, total):
        if done > 0:
            raise Cancelled

    with reporting(cancel), pytest.raises(Cancelled):
        capture(tiny_model, ["abc def", "ghi jkl", "mno"], sites="blocks.0.hook_resid_post", batch_size=1)
    assert count_hooks(tiny_model.hook_points()) == 0
