"""RoomSequencer, the per-room order of one worker's updates: every seq once, in order, case by case."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.sequencer import NOBODY, Held, RoomSequencer, newer

ROOM = "balance_4"


def test_a_seq_is_admitted_once_and_in_order() -> None:
    rooms = RoomSequencer()
    assert rooms.admit(ROOM, 1) and rooms.admit(ROOM, 2)
    assert not rooms.admit(ROOM, 2), "a repeat"
    assert not rooms.admit(ROOM, 1), "an older one"
    assert rooms.admit(ROOM, 5), "a gap is the publisher's, not a repeat"
    assert rooms.last_seq == {ROOM: 5}


def test_rooms_are_independent() -> None:
    rooms = RoomSequencer()
    assert rooms.admit("balance_4", 3) and rooms.admit("pnl_4", 1) and rooms.admit("balance_5", 1)


def test_nobody_is_skipped_where_nobody_catches_up() -> None:
    rooms = RoomSequencer()
    assert rooms.skip(ROOM, 1, "balance") is NOBODY


def test_updates_are_held_for_a_client_that_catches_up_and_only_for_it() -> None:
    rooms = RoomSequencer()
    rooms.hold("b", [ROOM])
    assert rooms.skip(ROOM, 7, "balance", packet="p7") == {"b"}
    assert rooms.skip("pnl_4", 7, "pnl") is NOBODY
    assert rooms.release("b", ROOM) == [Held(7, "balance", packet="p7")]
    assert rooms.skip(ROOM, 8, "balance") is NOBODY, "released"


def test_two_clients_catching_up_each_get_their_own_queue() -> None:
    rooms = RoomSequencer()
    rooms.hold("b", [ROOM])
    rooms.skip(ROOM, 7, "balance")
    rooms.hold("c", [ROOM])
    rooms.skip(ROOM, 8, "balance")
    assert [item.seq for item in rooms.release("b", ROOM)] == [7, 8]
    assert [item.seq for item in rooms.release("c", ROOM)] == [8]


def test_newer_keeps_what_history_did_not_send_and_every_queue_emit() -> None:
    held = [Held(5, "balance"), Held(None, "balance", data=["x"]), Held(6, "balance"), Held(9, "balance")]
    wanted, last = newer(held, 6)
    assert [item.seq for item in wanted] == [None, 9] and last == 9
    assert newer([], 3) == ([], 3)


def test_a_new_room_starts_where_its_first_client_is() -> None:
    rooms = RoomSequencer()
    rooms.settle("b", ROOM, last=4, current=6)
    assert rooms.last_seq[ROOM] == 6
    assert not rooms.admit(ROOM, 6) and rooms.admit(ROOM, 7)


def test_a_client_that_history_sent_ahead_skips_the_live_copies_until_level() -> None:
    rooms = RoomSequencer()
    rooms.admit(ROOM, 3)  # the room's other clients are at 3
    rooms.settle("b", ROOM, last=5, current=5)  # history sent b up to 5
    assert rooms.admit(ROOM, 4) and rooms.skip(ROOM, 4, "balance") == {"b"}
    assert rooms.admit(ROOM, 5) and rooms.skip(ROOM, 5, "balance") == {"b"}
    assert rooms.admit(ROOM, 6) and rooms.skip(ROOM, 6, "balance") is NOBODY, "level again, and forgotten"


def test_a_queue_emit_is_held_but_never_counted_as_a_seq() -> None:
    rooms = RoomSequencer()
    rooms.admit(ROOM, 3)
    rooms.settle("b", ROOM, last=5, current=5)
    assert not rooms.skip(ROOM, None, "balance", data=["x"]), "not a copy of anything history sent"


def test_reset_forgets_the_counts_but_not_the_rooms() -> None:
    rooms = RoomSequencer()
    rooms.admit(ROOM, 40)
    rooms.reset()
    assert rooms.last_seq == {ROOM: 0} and rooms.admit(ROOM, 1)


def test_forget_drops_rooms_no_longer_served() -> None:
    rooms = RoomSequencer()
    rooms.admit("balance_4", 1)
    rooms.admit("pnl_4", 1)
    rooms.settle("b", "pnl_4", last=3, current=3)
    rooms.forget({"balance_4"})
    assert rooms.last_seq == {"balance_4": 1}
    assert rooms.skip("pnl_4", 2, "pnl") is NOBODY


# Every seq once, in order: a room with a live client, and a client that subscribes with ``since`` while
# updates keep coming. The live stream lags behind history (an update is in history before it is
# published), and the history read falls anywhere inside the catch-up.


def run(total: int, since: int, before_hold: int, before_read: int, at_read: int, after_read: int,
        room_is_new: bool) -> tuple[list[int], list[int]]:
    """What the live client and the catching-up client receive, in order."""
    rooms = RoomSequencer()
    live_client: list[int] = []
    catching_up: list[int] = []
    members = [] if room_is_new else ["a"]
    if not room_is_new:
        rooms.settle("a", ROOM, last=0, current=0)  # a subscribed before anything was published

    def deliver(seq: int) -> None:
        if not members:
            return  # the fan-out sends nothing to a room no client of this worker is in
        if not rooms.admit(ROOM, seq):
            return
        skip = rooms.skip(ROOM, seq, "balance")
        for sid in members:
            if sid not in skip:
                (live_client if sid == "a" else catching_up).append(seq)

    sent_live = 0

    def live_up_to(seq: int) -> None:
        nonlocal sent_live
        for next_seq in range(sent_live + 1, seq + 1):
            deliver(next_seq)
        sent_live = max(sent_live, seq)

    live_up_to(before_hold)
    rooms.hold("b", [ROOM])
    members.append("b")
    live_up_to(before_read)
    missed = list(range(since + 1, at_read + 1))  # history at the read: everything published so far
    live_up_to(after_read)
    held = rooms.release("b", ROOM)
    catching_up.extend(missed)
    wanted, last = newer(held, max(missed[-1] if missed else 0, at_read))  # as Fanout.deliver_caught_up
    catching_up.extend(item.seq for item in wanted if item.seq is not None)
    rooms.settle("b", ROOM, last, at_read)
    live_up_to(total)
    return live_client, catching_up


@given(st.data())
def test_every_seq_reaches_each_client_once_and_in_order(data: st.DataObject) -> None:
    total = data.draw(st.integers(1, 30))
    before_hold = data.draw(st.integers(0, total))
    before_read = data.draw(st.integers(before_hold, total))
    at_read = data.draw(st.integers(before_read, total))  # history is never behind the live stream
    after_read = data.draw(st.integers(before_read, total))
    since = data.draw(st.integers(0, at_read))
    room_is_new = data.draw(st.booleans())
    live_client, catching_up = run(total, since, before_hold, before_read, at_read, after_read, room_is_new)
    if not room_is_new:
        assert live_client == list(range(1, total + 1))
    assert catching_up == list(range(since + 1, total + 1))


def test_the_case_history_ran_ahead_of_the_live_stream() -> None:
    live_client, catching_up = run(total=10, since=2, before_hold=3, before_read=4, at_read=8, after_read=5,
                                   room_is_new=False)
    assert live_client == list(range(1, 11)) and catching_up == list(range(3, 11))


def test_the_case_of_a_client_alone_in_a_new_room() -> None:
    _, catching_up = run(total=6, since=0, before_hold=0, before_read=0, at_read=3, after_read=4, room_is_new=True)
    assert catching_up == [1, 2, 3, 4, 5, 6]
