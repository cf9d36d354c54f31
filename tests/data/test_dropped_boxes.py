"""DroppedBoxCounter: when it warns and when it stops (hand-counted)."""

import logging

import pytest

from fiber_det.data.dropped_boxes import DroppedBoxCounter


def test_warns_at_the_first_drop_and_each_doubling(caplog):
    """Drops of 1, 1, 3, 0, 3 give totals 1, 2, 5, 5, 8: warnings at 1, 2 (passes 2),
    5 (passes 4) and 8 (passes 8); nothing for the record without drops."""
    counter = DroppedBoxCounter(max_query_len=16)
    with caplog.at_level(logging.WARNING, logger="fiber_det.data.dropped_boxes"):
        for dropped in (1, 1, 3, 0, 3):
            counter.add("d", seen=10, dropped=dropped, example="a long phrase")
    totals = [r.getMessage().split(":")[1].split(" of ")[0].strip() for r in caplog.records]
    assert totals == ["1", "2", "5", "8"]
    assert counter.seen == {"d": 50} and counter.dropped == {"d": 8}


def test_stops_past_half_once_enough_boxes_were_seen():
    """19 boxes all dropped: below MIN_BOXES (20), no error; the 20th dropped box: 20 of 20."""
    counter = DroppedBoxCounter(max_query_len=3)
    counter.add("d", seen=19, dropped=19)
    with pytest.raises(ValueError, match=r"d: 20 of 20 training boxes dropped .*MAX_QUERY_LEN=3"):
        counter.add("d", seen=1, dropped=1, example="x")
