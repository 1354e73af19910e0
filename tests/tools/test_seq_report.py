"""The simulator's summary of what reached the broker (sim.host.simnode.seq_report)."""

from sim.host.simnode import format_seq_report, seq_report


def test_duplicates_are_counted_as_copies_not_as_seqs():
    """One reading resent 43 times (a session broken before its PUBACK, again and again)."""
    payloads = [{"boot": 1, "seq": 1}] * 44 + [{"boot": 1, "seq": 2}, {"boot": 1, "seq": 2}]
    report = seq_report(payloads)
    assert report[1]["duplicates"] == [1, 2] and report[1]["copies"] == 44
    assert format_seq_report(report) == [
        "boot 1: 46 data messages, seq 1..2, no gap, 44 duplicate copies (of seq 1-2)"]


def test_gaps_and_order_per_boot():
    payloads = [{"boot": 2, "seq": s} for s in (1, 2, 5, 4)] + [{"boot": 3, "seq": 1}]
    report = seq_report(payloads)
    assert report[2]["missing"] == [3] and report[2]["out_of_order"] == 1
    assert report[2]["copies"] == 0 and report[3]["count"] == 1
    assert format_seq_report(report)[0] == (
        "boot 2: 4 data messages, seq 1..5, MISSING 3, 1 out of order")
