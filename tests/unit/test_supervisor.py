"""The supervisor feeds the watchdog only while every task has reported in recently."""

_RUN = """
import asyncio
from node.supervisor import Supervisor

class FakeWDT:
    feeds = 0
    def feed(self):
        FakeWDT.feeds += 1

wdt = FakeWDT()
sup = Supervisor(wdt)
alive = sup.register("alive", 1500)
hung = sup.register("hung", 1500)

async def keep_beating(beat, stop_after_ms):
    t = 0
    while t < stop_after_ms:
        beat()
        await asyncio.sleep_ms(100)
        t += 100

async def main():
    asyncio.create_task(keep_beating(alive, 10000))
    asyncio.create_task(keep_beating(hung, 2000))  # then hangs
    try:
        await asyncio.wait_for_ms(sup.run(), 6500)
    except asyncio.TimeoutError:
        pass
    print("feeds", FakeWDT.feeds, "stale", sup.stale())

asyncio.run(main())
"""


def test_feeds_only_while_all_tasks_beat(mpy):
    out = mpy(_RUN).stdout
    feeds = int(out.split("feeds ")[1].split()[0])
    # fed about once a second for the ~3.5 s both tasks were fresh, then never again
    assert 2 <= feeds <= 5, out
    assert "stale ['hung']" in out
    assert "no heartbeat from hung: watchdog not fed" in out
