"""node.journal and node.spill under MicroPython: readings across resets, torn and garbled
records, an unreadable journal, the byte bound, DUP, timestamps, the spill policy; and the
figures the issue asks for (flash writes per hour on LittleFS, heap), printed with -s.

The filesystem is tests/unit/powerfs.py (in RAM, loses power on cue); one boot's outbox and
journal are tests/unit/journalkit.Board.
"""

import json

import pytest

from tools.hosttools import MP32, REPO

UNIT = REPO / "tests" / "unit"
TORN = UNIT / "journal_torn.py"


def run(mpy, script, *args, **kwargs):
    """The script's last line, as JSON (the journal logs a line per batch before it)."""
    out = mpy(script, *args, path=[UNIT], **kwargs).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_readings_wait_on_flash_across_a_reset_and_go_first(mpy_each):
    """Boot 3 spills 120 readings (three segments) and resets; boot 4 sends them oldest first
    with their boot, seq, ts and topic, then its own. Only the oldest segment's readings go as
    DUP (its replay may have begun before the reset); the journal is gone once delivered."""
    r = run(mpy_each, """
import json
from journalkit import Board, START_S
from powerfs import PowerFs
fs = PowerFs()
a = Board(fs, 3)
for _ in range(40):
    a.take(3, size=60)
    a.spill()
files = sorted(fs.files)
b = Board(fs, 4)
b.take(2)
got = b.deliver()
b.journal.close()
print(json.dumps({"files": files, "got": got, "journaled": a.counts.journaled,
                  "replayed": b.counts.replayed, "left": sorted(fs.files) + sorted(fs.dirs),
                  "delivered": b.box.delivered, "start": START_S}))
""")
    got = r["got"]
    assert r["files"] == ["journal/1", "journal/2", "journal/3"]
    assert [(g[0], g[1]) for g in got] == [(3, s) for s in range(1, 121)] + [(4, 1), (4, 2)]
    assert [g[2] for g in got[:3]] == [r["start"] + 1, r["start"] + 2, r["start"] + 3]
    assert [g[4] for g in got[:4]] == ["climate", "sound", "climate", "sound"]
    first_segment = sum(1 for g in got if g[3])
    assert 30 < first_segment < 60 and all(g[3] for g in got[:first_segment]), got
    assert (r["journaled"], r["replayed"], r["delivered"]) == (120, 120, 122)
    assert r["left"] == []


def test_the_largest_readings_go_through_flash_whole(mpy_each):
    """Bodies as large as the outbox takes (MAX_BODY_BYTES) are journaled, and their records
    fit the window the journal reads segments through: none is skipped across a reset."""
    r = run(mpy_each, """
import json
from journalkit import Board
from node import payload
from node.outbox import MAX_BODY_BYTES
from powerfs import PowerFs
base = len(payload.fields((("rms_dbfs", -20.25), ("peak_dbfs", -3.5), ("pad", ""))))
fs = PowerFs()
a = Board(fs, 3)
for _ in range(20):
    a.take(2, size=MAX_BODY_BYTES - base)
    a.spill()
b = Board(fs, 4)
got = b.deliver()
print(json.dumps({"got": len(got), "dropped": a.box.dropped, "journaled": a.counts.journaled,
                  "skipped": b.counts.skipped, "replayed": b.counts.replayed}))
""")
    assert r == {"got": 40, "dropped": 0, "journaled": 40, "skipped": 0, "replayed": 40}, r


@pytest.mark.parametrize("durable", ["write", "close"])
def test_a_cut_at_any_write_loses_at_most_what_was_being_written(mpy, durable):
    """Every flash change of an outage cut in turn, every write at every byte: nothing that was
    on flash is lost, the next boot never fails, acknowledged readings sent again carry DUP.
    With a write per record landing at once (the simulator) a cut loses at most the reading
    being written; on LittleFS (appends land at close) at most the batch being committed."""
    r = run(mpy, TORN, durable, timeout=300)
    print(f"\ntorn writes ({durable} durable): {r['cuts']} cuts over {r['steps']} flash changes "
          f"of a {r['readings']}-reading outage; readings lost per cut of those being written: "
          f"{dict(sorted(r['lost'].items()))} (count of cuts); acknowledged readings sent again "
          f"as DUP over all cuts: {r['resent']}")
    assert r["fails"] == 0, r["first_bad"]
    lost = {int(k): v for k, v in r["lost"].items()}
    if durable == "write":
        assert r["cuts"] > 4000 and max(lost) == 1, r
    else:
        assert r["cuts"] > 20 and max(lost) <= 5, r


def test_garbled_or_foreign_files_are_skipped_and_counted_never_a_crash(mpy_each):
    """Bytes flipped, a segment cut short, one of random bytes, bytes inserted, foreign names and
    an empty segment: every boot opens the journal, delivers every reading of the undamaged
    segments, in order, and counts what it skipped."""
    r = run(mpy_each, """
import json, random
from journalkit import Board
from powerfs import PowerFs
random.seed(7)

def seqs_in(fs, name):
    # What one segment holds, read back through a journal on a copy of the flash.
    copy = PowerFs()
    copy.files = {name: bytearray(fs.files[name])}
    copy.dirs = set(fs.dirs)
    return [g[1] for g in Board(copy, 9).deliver()]

runs = []
for trial in range(60):
    fs = PowerFs()
    a = Board(fs, 2)
    for _ in range(30):
        a.take(3, size=80)
        a.spill()
    names = sorted(fs.files)
    hit = names[trial % len(names)]
    damaged = seqs_in(fs, hit)
    data = fs.files[hit]
    how = trial % 5
    if how == 0:
        for _ in range(1 + random.getrandbits(3)):
            data[random.getrandbits(12) % len(data)] ^= 1 << random.getrandbits(3)
    elif how == 1:
        fs.files[hit] = data[:random.getrandbits(12) % len(data)]
    elif how == 2:
        fs.files[hit] = bytearray(random.getrandbits(8) for _ in range(len(data)))
    elif how == 3:
        at = random.getrandbits(12) % len(data)
        junk = bytes(random.getrandbits(8) for _ in range(1 + random.getrandbits(6)))
        fs.files[hit] = data[:at] + junk + data[at:]
    else:
        damaged = []
        fs.files["journal/notes.txt"] = bytearray(b"hello")
        fs.files["journal/99"] = bytearray()
    b = Board(fs, 3)
    got = [g[1] for g in b.deliver()]
    runs.append({"how": how, "ordered": got == sorted(set(got)),
                 "undamaged_all_there": all(s in got for s in range(1, 91) if s not in damaged),
                 "skipped": b.counts.skipped, "delivered": len(got), "left": len(b.journal)})
print(json.dumps(runs))
""")
    assert all(x["ordered"] and x["undamaged_all_there"] and not x["left"] for x in r), r
    assert all(x["skipped"] for x in r if x["how"] in (0, 2, 3)), r
    assert all(x["delivered"] == 90 and not x["skipped"] for x in r if x["how"] == 4), r


def test_an_unreadable_journal_is_set_aside_and_a_new_one_starts(mpy):
    r = run(mpy, """
import json
from journalkit import Board
from powerfs import PowerFs
fs = PowerFs()
a = Board(fs, 1)
a.take(5)
a.spill()
fs.unreadable = True   # every segment read fails (EIO)
b = Board(fs, 2)
aside = sorted(fs.files)
fs.unreadable = False
b.take(2)
b.spill()
got = b.deliver()
print(json.dumps({"aside": aside, "got": [g[:2] for g in got], "dropped": b.counts.dropped}))
""")
    assert r["aside"] == ["journal.bad/1"]
    assert r["got"] == [[2, 1], [2, 2]]
    assert r["dropped"] == 0  # nothing was counted as waiting in a journal it could not read


def test_undated_readings_get_a_true_ts_after_a_reset_or_none(mpy):
    """Taken before the clock was set and journaled: after a reset they get their ts worked back
    from the anchor written when the clock became known, or go with ts null when it never did;
    a later boot that reuses the boot number (boot.json lost) never dates them by its clock."""
    r = run(mpy, """
import json
from journalkit import Board
from powerfs import PowerFs
fs = PowerFs()
a = Board(fs, 7, now=None)       # power-on: no NTP yet
a.take(3)                        # uptime 1, 2, 3 s
a.spill()
a.tick(10)
a.now = 1800000100               # NTP answers at uptime 13 s
a.take(1)                        # dated when taken (uptime 14 s)
a.spill()                        # and the anchor goes with it
b = Board(fs, 7, now=None)       # power cut; boot.json lost, so boot 7 again, no clock
b.take(2)
b.spill()                        # boot 7 (second life): undated, never anchored
c = Board(fs, 8)                 # power cut again, the clock known at once
print(json.dumps([g[:3] for g in c.deliver()]))
""")
    assert r == [[7, 1, 1800000088], [7, 2, 1800000089], [7, 3, 1800000090],
                 [7, 4, 1800000101], [7, 1, None], [7, 2, None]]


def test_the_byte_bound_drops_the_oldest_segments_but_not_the_reading_in_flight(mpy):
    r = run(mpy, """
import json
from journalkit import Board
from powerfs import PowerFs
fs = PowerFs()
a = Board(fs, 1, max_bytes=16384)
a.take(2)
a.spill()
inflight = a.deliver(ack=False)[0]      # seq 1 in flight from the journal, no PUBACK yet
for _ in range(60):
    a.take(3, size=150)
    a.spill()
a.box.pop(inflight[1])                  # its PUBACK: it was kept, and is delivered
got = a.deliver()
seqs = [inflight[1]] + [g[1] for g in got]
print(json.dumps({"segments": len(fs.files), "dropped": a.counts.dropped,
                  "taken": len(a.taken), "delivered": len(seqs), "seqs": seqs,
                  "ordered": seqs == sorted(seqs)}))
""")
    assert r["segments"] <= 4 and r["dropped"] > 0, r
    assert r["taken"] == r["delivered"] + r["dropped"], r
    assert r["ordered"] and r["seqs"][0] == 1, r
    gap = [s for s in range(1, r["taken"] + 1) if s not in r["seqs"]]
    assert gap == list(range(gap[0], gap[0] + r["dropped"])), gap  # one run: the oldest


def test_a_reading_in_flight_when_it_moves_to_flash_is_popped_by_its_puback(mpy):
    """The outbox past its watermark while connected: the reading in flight moves to flash, its
    PUBACK still pops it; a resend is marked DUP. After a reset the segment goes again whole,
    marked DUP, the acknowledged reading too: segments are deleted whole (a duplicate, never a
    loss)."""
    r = run(mpy, """
import json
from journalkit import Board
from powerfs import PowerFs
fs = PowerFs()
a = Board(fs, 1)
a.take(3)
seq, topic, body, dup = a.box.send_next()  # seq 1 out, no PUBACK yet
a.spill()                                  # 1, 2, 3 to flash
a.box.pop(seq)                             # its PUBACK
after_pop = a.deliver(ack=False)           # seq 2 next, not a resend
a.take(2)
a.box.send_next()                          # seq 2 resent (DUP), the link breaks
b = Board(fs, 2)
print(json.dumps({"first_dup": dup, "after_pop": after_pop, "replayed": a.counts.replayed,
                  "next_boot": b.deliver()}))
""")
    assert r["first_dup"] is False and r["replayed"] == 1
    assert r["after_pop"][0][1:4:2] == [2, False]
    assert [(g[1], g[3]) for g in r["next_boot"]] == [(1, True), (2, True), (3, True)]


def test_a_flash_that_refuses_writes_keeps_the_readings_in_ram(mpy):
    r = run(mpy, """
import json
from journalkit import Board
from powerfs import ENOSPC, PowerFs
fs = PowerFs()
a = Board(fs, 1)
a.take(4)
a.spill()
fs.fail = ENOSPC
a.take(3)
try:
    a.spill()
    outcome = "no error"
except OSError as e:
    outcome = "OSError %d" % e.errno
fs.fail = 0
print(json.dumps({"outcome": outcome, "in_ram": a.box.in_ram(),
                  "got": [g[1] for g in a.deliver()]}))
""")
    assert r == {"outcome": "OSError 28", "in_ram": 3, "got": [1, 2, 3, 4, 5, 6, 7]}


# node.spill with the unix port's filesystem in a temporary folder, its clock driven here.
_SPILL = """
import asyncio, json, os, sys
from node import spill
from node.outbox import Outbox
from node.payload import fields
up = [0]
spill.uptime_ms = lambda: up[0]
class Publisher:
    connected = True
box = Outbox(100, 1, lambda: 1800000000 + up[0] // 1000, lambda: up[0], 16384)
settings = {"bytes": 131072, "grace_s": 30, "flush_s": 10, "watermark_pct": 75}
pub = Publisher()
s = spill.Spill(settings, box, pub, lambda: 1800000000)
events = []
def second(t, connected, take=0, send=False):
    pub.connected = connected
    up[0] = t * 1000
    for _ in range(take):
        box.add(b"n/climate", (("temperature", 21.5),))
    if send and len(box):
        seq = box.send_next()[0]
        box.pop(seq)
    asyncio.run(s.step())
    events.append([t, box.in_ram(), len(box.journal) if box.journal else None,
                   "node.journal" in sys.modules, sorted(os.listdir(".")) == ["journal"]])
"""


def test_spill_writes_only_after_the_grace_time_in_batches_and_lets_go_when_empty(mpy, tmp_path):
    r = run(mpy, _SPILL + """
loaded_at_start = "node.journal" in sys.modules
for t in range(1, 61):             # connected, draining: nothing to flash
    second(t, True, take=1, send=True)
online = events[-1]
for t in range(61, 181):           # the broker gone for 2 minutes, a reading a second
    second(t, False, take=1)
writes = [e for e in events if e[0] > 60 and e[2] and e[1] == 0]
for t in range(181, 300):          # back: the journal first, then RAM; then it goes
    second(t, True, send=True)
    second(t, True, send=True)
print(json.dumps({"loaded_at_start": loaded_at_start, "online": online,
                  "first_write": min(e[0] for e in events if e[2]),
                  "batches": len(writes), "end": events[-1], "journaled": s.journaled,
                  "replayed": s.replayed, "delivered": box.delivered}))
""", cwd=tmp_path)
    assert r["loaded_at_start"] is False
    assert r["online"][1:] == [0, None, False, False]  # nothing journaled, not even imported
    assert 60 + 30 <= r["first_write"] <= 60 + 31, r  # the grace time
    assert 8 <= r["batches"] <= 10, r  # ~90 readings, a batch when the oldest is 10 s old
    assert r["end"][1:] == [0, None, False, False], r  # unloaded, folder deleted
    assert r["journaled"] == r["replayed"] and r["delivered"] == 180, r


def test_spill_past_the_watermark_while_connected_and_a_journal_found_at_boot(mpy, tmp_path):
    r = run(mpy, _SPILL + """
for t in range(1, 80):             # connected but nothing acknowledged: the outbox fills
    second(t, True, take=1)
full = [e for e in events if e[2]]
box2 = Outbox(100, 2, lambda: None, lambda: 0, 16384)
s2 = spill.Spill(settings, box2, pub, lambda: None)   # the next boot
box2.add(b"n/climate", (("temperature", 22.0),))
held = [box2.journal, box2.send_next()]              # this boot's reading waits...
asyncio.run(s2.step())                               # ...until the first tick loads it
first = box2.send_next()
print(json.dumps({"first": full[0] if full else None, "held": held, "found": len(box2.journal),
                  "then": json.loads(first[2])["boot"]}))
""", cwd=tmp_path)
    # At 75 % of 100 readings, batches to flash until the outbox is below it again.
    t, in_ram, on_flash = r["first"][:3]
    assert t == 75 and in_ram + on_flash == 75 and in_ram < 75 - 50, r
    assert r["held"] == [None, None] and r["found"] == on_flash and r["then"] == 1, r


def test_no_room_to_load_the_journal_is_logged_and_tried_again(mpy, tmp_path):
    """A heap too fragmented for the journal's code: logged, the readings stay in RAM, no task
    dies, and a minute later it loads."""
    r = run(mpy, _SPILL + """
import node
class NoRoom:
    def __getattr__(self, name):
        raise MemoryError("memory allocation failed, allocating 1280 bytes")
node.journal = NoRoom()   # what `from node import journal` finds
for t in range(1, 40):
    second(t, False, take=1)
stuck = events[-1]
assert not hasattr(node, "journal")  # the failed attempt left nothing: the next finds room
for t in range(40, 100):
    second(t, False, take=1)
print(json.dumps({"stuck": stuck, "end": events[-1]}))
""", cwd=tmp_path)
    assert r["stuck"][1:3] == [39, None], r  # all in RAM, no journal
    assert r["end"][1] < 10 and r["end"][2] >= 80, r  # loaded at 31 + 60 s, then spilled


def test_a_journal_that_cannot_be_made_leaves_the_heap(mpy, tmp_path):
    """Its code loaded, but no room for its buffers: the module goes again (8 KB of code the
    other tasks need), the readings stay in RAM, and a minute later it loads afresh."""
    r = run(mpy, _SPILL + """
import sys
from node import journal
def no_room(*args):
    raise MemoryError("memory allocation failed, allocating 1024 bytes")
journal.Journal = no_room
del journal
for t in range(1, 40):
    second(t, False, take=1)
stuck = [events[-1], "node.journal" in sys.modules]
for t in range(40, 100):
    second(t, False, take=1)
print(json.dumps({"stuck": stuck, "end": events[-1]}))
""", cwd=tmp_path)
    assert r["stuck"] == [r["stuck"][0], False] and r["stuck"][0][1:3] == [39, None], r
    assert r["end"][1] < 10 and r["end"][2] >= 80, r  # the real one, imported again


def test_config_minimum_is_four_segments(mpy):
    out = mpy("from node import config, journal; "
              "print(config.JOURNAL_BYTES_MIN == 4 * journal.SEGMENT_BYTES)").stdout
    assert out.split()[-1] == "True"


# --- figures ---------------------------------------------------------------------------------
# An hour of outage at config.json's rates (a climate reading every 5 s, a sound level every
# 10 s) through node.spill and node.journal onto a real LittleFS (vfs.VfsLfs2, MicroPython's
# defaults as on the ESP32: 4 KB blocks, 32-byte reads and programs) on a RAM block device that
# counts erases and programmed bytes.
_WEAR = """
import asyncio, json, os, sys, vfs
from node import spill
from node.outbox import Outbox
BLOCK = 4096
BLOCKS = 480          # ~1.9 MB: the vfs partition of ESP32_GENERIC 1.27 on a 4 MB board
class Flash:
    def __init__(self):
        self.data = bytearray(BLOCK * BLOCKS)
        self.erases = [0] * BLOCKS
        self.programmed = 0
    def readblocks(self, n, buf, off=0):
        at = n * BLOCK + off
        buf[:] = self.data[at:at + len(buf)]
    def writeblocks(self, n, buf, off=None):
        if off is None:
            self.erases[n] += 1
            off = 0
        at = n * BLOCK + off
        self.data[at:at + len(buf)] = buf
        self.programmed += len(buf)
    def ioctl(self, op, arg):
        if op == 4:
            return BLOCKS
        if op == 5:
            return BLOCK
        if op == 6:
            self.erases[arg] += 1
        return 0
dev = Flash()
vfs.VfsLfs2.mkfs(dev)
vfs.mount(vfs.VfsLfs2(dev), "/flash")
os.chdir("/flash")
up = [0]
spill.uptime_ms = lambda: up[0]
class Publisher:
    connected = False
box = Outbox(100, 1, lambda: 1800000000 + up[0] // 1000, lambda: up[0], 16384)
flush_s = int(sys.argv[1])
s = spill.Spill({"bytes": 131072, "grace_s": 30, "flush_s": flush_s, "watermark_pct": 75},
                box, Publisher(), lambda: 1800000000)
from node import journal
writes = [0]
append = journal.Journal.append
def counted(self, outbox):
    writes[0] += 1  # one batch: one open, append, close
    return append(self, outbox)
journal.Journal.append = counted
e0, p0 = sum(dev.erases), dev.programmed
for t in range(1, 3601):
    up[0] = t * 1000
    if t % 5 == 0:
        box.add(b"nodes/30aea4c8b1f0/climate", (("temperature", 22.3), ("humidity", 45.1)))
    if t % 10 == 0:
        box.add(b"nodes/30aea4c8b1f0/sound", (("rms_dbfs", -31.42), ("peak_dbfs", -18.07),
                                              ("measured_pct", 100)))
    asyncio.run(s.step())
size = sum(os.stat("journal/" + n)[6] for n in os.listdir("journal"))
print(json.dumps({"readings": box.taken, "journaled": s.journaled, "writes": writes[0],
                  "erases": sum(dev.erases) - e0, "programmed": dev.programmed - p0,
                  "max_block_erases": max(dev.erases), "blocks": BLOCKS,
                  "segments": len(os.listdir("journal")), "journal_bytes": size}))
"""


@pytest.mark.parametrize("flush_s", [10, 0])
def test_flash_cost_of_an_hour_of_outage_on_littlefs(mpy, flush_s):
    r = run(mpy, _WEAR, flush_s, heap="8m", timeout=300)
    per_reading = r["journal_bytes"] / r["journaled"]
    years = 100000 * r["blocks"] / r["erases"] / 24 / 365
    print(f"\nflash, 1 h of outage at the default rates, journal.flush_s {flush_s}: "
          f"{r['readings']} readings, {r['journaled']} journaled in {r['writes']} writes "
          f"({r['journaled'] / max(1, r['writes']):.1f} a write); LittleFS: {r['erases']} block "
          f"erases, {r['programmed']} bytes programmed, the most erased block "
          f"{r['max_block_erases']}x; {r['journal_bytes']} bytes of journal, "
          f"{per_reading:.0f} a reading; 100,000 erases x {r['blocks']} blocks last "
          f"{years:.1f} years of continuous outage")
    assert r["journaled"] >= r["readings"] - 6  # the last grace time / flush may wait in RAM
    assert r["erases"] <= 1.3 * r["writes"], r  # one erase a write (LittleFS copies the block)


_HEAP = """
import asyncio, gc, json, sys
from node import log
gc.collect()
before = gc.mem_alloc()
from node import spill
gc.collect()
spill_module = gc.mem_alloc() - before
from powerfs import PowerFs
from node.outbox import Outbox
class Counts:
    journaled = replayed = dropped = skipped = 0
class Discard:
    # A file that takes writes and keeps nothing: the journal's own allocations, alone.
    def write(self, data):
        return len(data)
    def close(self):
        pass
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        pass
class NullFs(PowerFs):
    def open(self, path, mode):
        return Discard()
def fill(box, n):
    for i in range(n):
        box.add(b"nodes/30aea4c8b1f0/climate", (("temperature", 22.5), ("humidity", 45.0)))
box = Outbox(100, 1, lambda: 1800000000, lambda: 0, 16384)
gc.collect()
before = gc.mem_alloc()
from node import journal
gc.collect()
module = gc.mem_alloc() - before
j = journal.Journal(NullFs(), "journal", Counts(), 1, lambda: 1800000000, lambda: 0, 131072)
gc.collect()
attached = gc.mem_alloc() - before
fill(box, 60)
gc.collect()
gc.disable()
x = gc.mem_alloc()
n = j.append(box)
per_append = (gc.mem_alloc() - x) / n
gc.enable()
fs = PowerFs()
j = box.journal = journal.Journal(fs, "journal", Counts(), 1, lambda: 1800000000, lambda: 0,
                                  131072)
fill(box, 40)
while box.in_ram():
    j.append(box)
gc.collect()
gc.disable()
x = gc.mem_alloc()
for _ in range(20):
    box.pop(box.send_next()[0])
per_send = (gc.mem_alloc() - x) / 20
gc.enable()
while len(box):
    box.pop(box.send_next()[0])
box.journal = None
j.close()   # empty: deleted, and the module unloaded
j = None
fill(box, 20)
gc.collect()
gc.disable()
x = gc.mem_alloc()
for _ in range(20):
    box.pop(box.send_next()[0])
per_send_ram = (gc.mem_alloc() - x) / 20
gc.enable()
del fs
unloaded = "node.journal" not in sys.modules
del journal
gc.collect()
print(json.dumps({"module": module, "attached": attached, "after_unload": gc.mem_alloc() - before,
                  "spill_module": spill_module, "unloaded": unloaded,
                  "per_append": per_append, "readings_per_append": n, "per_send": per_send,
                  "per_send_ram": per_send_ram}))
"""


def _heap_line(r, where):
    return (f"journal heap ({where}): node.spill (always loaded) {r['spill_module']} B; "
            f"node.journal {r['module']} B, loaded with its instance and "
            f"buffers {r['attached']} B, {r['after_unload']} B left once unloaded; allocated "
            f"per reading: {r['per_append']:.0f} B on its way to flash (a batch of "
            f"{r['readings_per_append']}), {r['per_send']:.0f} B sent from flash (from RAM: "
            f"{r['per_send_ram']:.0f} B)")


def test_heap_the_journal_takes_while_loaded(mpy_each):
    """What loading the journal costs (its code, one instance with its buffers), what each
    reading allocates on its way to and from flash, and what stays once it is unloaded."""
    r = run(mpy_each, _HEAP)
    print("\n" + _heap_line(r, "from source"))
    assert r["attached"] - r["module"] >= 2048  # its two buffers, taken once when loaded
    assert r["unloaded"] and r["after_unload"] < r["module"] / 2, r
    assert r["per_append"] < 400 and r["per_send"] < 2 * r["per_send_ram"] + 200, r


@pytest.mark.skipif(not MP32.is_file(), reason="no 32-bit MicroPython (../shared/mp32) here")
def test_heap_of_the_journal_from_the_x86_bundle_on_micropython32(mpy, tmp_path, monkeypatch):
    """The board's figure: the .mpy bundle on the 32-bit 1.27 port."""
    from tools import bundle

    app = tmp_path / "x86"
    bundle.build(REPO, app, "x86", log=lambda line: None)
    monkeypatch.setenv("MICROPYTHON", str(MP32))
    r = json.loads(mpy(_HEAP, path=[UNIT, app / "lib"]).stdout.strip().splitlines()[-1])
    print("\n" + _heap_line(r, "micropython32, x86 .mpy"))
    assert r["attached"] < 12000, r
