"""node.journal under power cuts at every step of an outage, run by tests/unit/test_journal.py:

    micropython tests/unit/journal_torn.py write|close

Boot 5 takes 41 readings in an outage and spills them in batches of 1 to 5 over two segments,
then the broker comes back: 12 are delivered (the first segment deleted on the way), 3 more
are taken and spilled, the rest delivered. That run is cut at each of its flash changes in
turn, and every write at each of its bytes (PowerFs: `write` each write() lands at once, as on
the simulator's host filesystem; `close` a file's appends land at its close, as on LittleFS).
After each cut boot 6 opens the journal and delivers it. Prints one JSON line: cuts tried, the
cuts that broke a rule (the first few named), and how many readings each cut lost of those it
was writing.
"""

import json
import sys

from journalkit import Board
from powerfs import PowerCut, PowerFs

DURABLE = sys.argv[1]
SPILLS = (1, 3, 2, 4, 1, 2, 3, 5, 2, 1, 4, 3, 2, 2, 3, 3)
READING = 3  # node.journal's record kind (byte 5 of a record; its length in bytes 6-7)


def readings_in(data):
    """Reading records in a run of journal records."""
    at = n = 0
    while at + 8 <= len(data):
        n += (data[at + 5] & 0x0F) == READING
        at += 8 + (data[at + 6] | data[at + 7] << 8)
    return n


def spill(fs, b, seen):
    while b.box.in_ram():
        seen["batch"] = [b.box.peek(i)[0] for i in range(b.box.in_ram())]
        seen["log_at"] = len(fs.log)
        n = b.journal.append(b.box)
        seen["flash"] += seen["batch"][:n]
        seen["batch"] = []
        if not n:
            break


def deliver(b, seen, n):
    for _ in range(n):
        item = b.box.send_next()
        if item is None:
            return
        seen["acked"].append(item[0])  # its PUBACK came: the broker has it
        b.box.pop(item[0])


def outage(fs, seen):
    b = Board(fs, 5)
    for n in SPILLS:
        b.take(n, size=110)
        spill(fs, b, seen)
    deliver(b, seen, 12)
    b.take(3, size=110)
    spill(fs, b, seen)
    deliver(b, seen, 1000)


def check(fs, step, keep):
    """Cut the outage at `step` (keeping `keep` bytes of a write), boot again: (what went
    wrong, readings lost of those being written at the cut, acknowledged ones sent again)."""
    seen = {"flash": [], "batch": [], "acked": [], "log_at": 0}
    fs.cut(step, keep)
    try:
        outage(fs, seen)
    except PowerCut:
        pass
    cut_at = len(fs.log)
    what, data = fs.log[-1]
    fs.power_on()
    b = Board(fs, 6)
    got = b.deliver()
    seqs = [g[1] for g in got]
    bad = []
    if any(g[0] != 5 for g in got) or seqs != sorted(set(seqs)):
        bad.append("order or boots: %s" % seqs)
    lost = [s for s in seen["flash"] if s not in seqs and s not in seen["acked"]]
    if lost:
        bad.append("lost readings that were on flash: %s" % lost)
    batch = seen["batch"]
    invented = [s for s in seqs if s not in seen["flash"] and s not in batch]
    if invented:
        bad.append("readings never written: %s" % invented)
    if DURABLE == "write":
        # A write per record: the batch's readings whose write() was done are on flash.
        written = sum(1 for w, d in fs.log[seen["log_at"]:cut_at - 1]
                      if w == "write" and d[5] & 0x0F == READING)
        being_written = 1 if batch and what == "write" and data[5] & 0x0F == READING else 0
    else:
        written = 0  # the commit was cut: the whole batch is gone
        being_written = readings_in(data) if batch and what == "commit" else 0
    from_batch = [s for s in batch if s in seqs]
    if batch and from_batch != batch[:written]:
        bad.append("of the batch %s came %s, not the %d written" % (batch, from_batch, written))
    undup = [g[1] for g in got if g[1] in seen["acked"] and not g[3]]
    if undup:
        bad.append("acknowledged before the cut, sent again without DUP: %s" % undup)
    # The journal goes on working: a new reading, spilled and delivered.
    b.take(1)
    b.spill()
    again = b.deliver()
    if [g[:2] for g in again] != [(6, 1)] or len(b.journal) or b.counts.dropped:
        bad.append("after the cut: %s" % again)
    return bad, being_written, sum(1 for g in got if g[1] in seen["acked"])


full = PowerFs(DURABLE)
outage(full, {"flash": [], "batch": [], "acked": [], "log_at": 0})
cuts = fails = resent = 0
lost = {}
first_bad = []
for step in range(1, len(full.log) + 1):
    what, data = full.log[step - 1]
    for keep in range(max(1, len(data)) if what == "write" else 1):
        bad, n, again = check(PowerFs(DURABLE), step, keep)
        cuts += 1
        lost[n] = lost.get(n, 0) + 1
        resent += again
        if bad:
            fails += 1
            if len(first_bad) < 5:
                first_bad.append([step, keep, what] + bad)
print(json.dumps({"steps": len(full.log), "cuts": cuts, "fails": fails, "lost": lost,
                  "resent": resent, "first_bad": first_bad, "readings": sum(SPILLS) + 3}))
