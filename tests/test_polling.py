"""PromptGrid collects replies as Flower's Grid does, on its own shorter beat."""

from types import SimpleNamespace

import pytest

from strategies import PromptGrid


class SlowGrid:
    """Replies to message i arrive on poll i + 1 (one per poll)."""

    def __init__(self):
        self.polls = 0

    def push_messages(self, messages):
        return [f"id-{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids):
        self.polls += 1
        want = f"id-{self.polls - 1}"
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=want))] \
            if want in ids else []

    def get_node_ids(self):
        return [1, 2, 3]


def test_replies_are_collected_on_the_short_beat_until_all_are_in():
    now, sleeps = [0.0], []

    def sleep(s):
        sleeps.append(s)
        now[0] += s

    grid = PromptGrid(SlowGrid(), interval=0.2, clock=lambda: now[0], sleep=sleep)
    replies = grid.send_and_receive(["a", "b", "c"], timeout=60)
    assert [r.metadata.reply_to_message_id for r in replies] == ["id-0", "id-1", "id-2"]
    assert sleeps == [0.2, 0.2]  # no sleep once the last reply is in
    assert grid.get_node_ids() == [1, 2, 3]  # everything else is the Grid's own


def test_the_timeout_ends_the_wait_with_the_replies_so_far():
    now = [0.0]

    def sleep(s):
        now[0] += s

    grid = PromptGrid(SlowGrid(), interval=1.0, clock=lambda: now[0], sleep=sleep)
    replies = grid.send_and_receive(["a", "b", "c", "d", "e"], timeout=2.5)
    # polls at t = 0, 1, 2 and a last one after the last sleep (t = 3, past the timeout):
    # what came in meanwhile is kept; the wait never exceeds timeout + one interval
    assert len(replies) == 4 and now[0] == 3.0
    with pytest.raises(ValueError, match="interval must be > 0"):
        PromptGrid(SlowGrid(), interval=0)
