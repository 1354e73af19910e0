"""Shared by the fault-injection suites (test_faults.py, test_soak.py): brokers and subscribers
that keep sessions across outages, and what a node run took, delivered, lost and lagged.

    from tests.e2e.faultkit import pbroker_factory, psub_factory  # noqa: F401  (fixtures)

- `pbroker_factory(port=None)`: a Mosquitto keeping sessions across stop/start and SIGKILL.
- `psub_factory(broker, client_id)`: a persistent-session subscriber (infra.subscribe_persistent);
  `psub_factory.watch(broker)`: a plain one, connected at once, only for timing a delivery.
- `Figures` / `figures(...)`: one scenario's numbers; `format_table(rows)` prints them all.
"""

import ast
import re
import time
from dataclasses import dataclass

import pytest

from tests.e2e.infra import (
    CONNECTED_RX,
    TAKEN_RX,
    data_payloads,
    managed_brokers,
    start_persistent_broker,
    subscribe,
    subscribe_persistent,
)

# The node's records (lib/node, main.py): a failed attempt, a reading, the telemetry summary.
RETRY_RX = r"\bmqtt: (.*); retrying in (\d+) ms"
ANY_TAKEN_RX = r"\b(climate|sound): reading (\d+)"
TELEMETRY_RX = (r"\btelemetry: taken (\d+) delivered (\d+) queued (\d+) dropped (\d+) "
                r"heap (\d+) lag (\{[^}]*\})")
# A node that says one of these has crashed or is about to be reset by its watchdog.
CRASH_RX = r"task died|Traceback|no heartbeat from|sim: (main\.py stopped|WDT fired)"
# The loop-lag budget. Printed against, never asserted: timings are not test verdicts.
LAG_BUDGET_P99_MS = 20
LAG_BUDGET_MAX_MS = 250
# Asserted: a loop stuck this long is no lag but a hang (half the sound task's 5 s silence
# limit, after which the watchdog resets the board).
LAG_SANITY_MAX_MS = 2500


# --- fixtures --------------------------------------------------------------------------------
@pytest.fixture
def pbroker_factory(certs, tmp_path, request):
    def start(n, port=None):
        return start_persistent_broker(certs, tmp_path / f"pbroker-{n}", port=port)

    yield from managed_brokers(request, start)


@pytest.fixture
def psub_factory(certs):
    subs = []

    def make(broker, client_id, topic="nodes/#"):
        sub = subscribe_persistent(certs, broker, client_id, topic)
        subs.append(sub)
        return sub

    def watch(broker, topic="nodes/#"):
        sub = subscribe(certs, broker, topic)
        subs.append(sub)
        return sub

    make.watch = watch
    yield make
    for s in subs:
        s.close()


# --- the node's log ----------------------------------------------------------------------------
def crashed(node):
    """Why the node is broken (a log line, or its exit), or None while it runs fine."""
    bad = node.find(CRASH_RX)
    if bad:
        return f"node log: {bad[0].string!r}"
    if not node.running():
        return f"node exited with code {node.returncode}"
    return None


def telemetry_log(node, since=0):
    """The node's telemetry records (logged every interval, online or not), oldest first."""
    out = []
    for m in node.find(TELEMETRY_RX, since):
        taken_n, delivered, queued, dropped, heap = map(int, m.groups()[:5])
        out.append({"t": m.string.t, "taken": taken_n, "delivered": delivered, "queued": queued,
                    "dropped": dropped, "heap": heap, "lag": ast.literal_eval(m.group(6))})
    return out


def worst_lag(node, since=0):
    """The worst p50, p99 and max loop lag (ms) over the telemetry intervals logged; None
    when no interval ended yet."""
    windows = [r["lag"] for r in telemetry_log(node, since)]
    if not windows:
        return None
    return {k: max(w.get(k, 0) for w in windows) for k in ("p50_ms", "p99_ms", "max_ms")}


def wait_telemetry_after(node, t, timeout):
    """Wait for a telemetry record logged after monotonic time t (its lag window then covers
    what happened before t); returns it, or None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        later = [r for r in telemetry_log(node) if r["t"] > t]
        if later:
            return later[0]
        time.sleep(0.1)
    return None


def taken(node):
    """{(kind, seq)} of every reading the node logged as queued."""
    return {(kind, int(m.group(1))) for kind in TAKEN_RX for m in node.find(TAKEN_RX[kind])}


def retry_delays_ms(node, since=0):
    return [int(m.group(2)) for m in node.find(RETRY_RX, since)]


# --- what arrived ------------------------------------------------------------------------------
def arrivals(subs, topics):
    """Every data message of every subscriber in `subs`, as parsed payloads with "_kind"."""
    return [p for s in subs for p in data_payloads(s, topics)]


def wait_delivered(node, subs, timeout, skip=()):
    """Wait until every reading the node logged as taken (but seqs in `skip`) arrived on one of
    `subs`; returns the arrivals. Fails at once if the node crashes."""
    deadline = time.monotonic() + timeout
    skip = set(skip)
    while True:
        got = {(p["_kind"], p["seq"]) for p in arrivals(subs, node.topics)}
        missing = sorted(x for x in taken(node) if x not in got and x[1] not in skip)
        if not missing:
            return arrivals(subs, node.topics)
        why = crashed(node)
        if why or time.monotonic() > deadline:
            raise AssertionError(f"taken but never delivered: {missing}"
                                 + (f" ({why})" if why else f" after {timeout} s"))
        time.sleep(0.1)


def first_delivery_after(subs, topics, t, timeout):
    """Seconds from monotonic time t to the first data message any of `subs` received after t."""
    rx = re.compile("^" + re.escape(topics.all[:-1]) + "(climate|sound)$")
    deadline = time.monotonic() + timeout
    while True:
        times = [m.t for s in subs for m in s.select(rx.pattern) if m.t >= t]
        if times:
            return min(times) - t
        if time.monotonic() > deadline:
            raise TimeoutError(f"no reading delivered within {timeout} s")
        time.sleep(0.02)


def telemetry_dropped(subs, topics):
    """The largest `dropped` any telemetry message carried (the counter only grows); None
    when no telemetry arrived."""
    values = [m.json().get("dropped") for s in subs for m in s.select(
        "^" + re.escape(topics.telemetry) + "$")]
    values = [v for v in values if isinstance(v, int)]
    return max(values) if values else None


# --- figures -----------------------------------------------------------------------------------
@dataclass
class Figures:
    scenario: str
    taken: int  # readings the node logged, up to the last seq delivered
    delivered: int  # distinct seqs that reached the subscriber
    duplicated: int  # arrivals beyond the first of a seq (QoS 1 resends, broker redelivery)
    dropped: int  # the node's count (telemetry), readings it had to throw away
    lag: dict | None  # worst p50/p99/max loop lag (ms) over the scenario's telemetry windows
    back_to_first_s: float | None = None  # broker back -> first reading delivered
    note: str = ""

    def over_budget(self):
        if not self.lag:
            return ""
        over = []
        if self.lag["p99_ms"] > LAG_BUDGET_P99_MS:
            over.append(f"p99>{LAG_BUDGET_P99_MS}")
        if self.lag["max_ms"] > LAG_BUDGET_MAX_MS:
            over.append(f"max>{LAG_BUDGET_MAX_MS}")
        return ",".join(over)

    def cells(self):
        lag = ("/".join(str(self.lag[k]) for k in ("p50_ms", "p99_ms", "max_ms"))
               if self.lag else "n/a")
        back = "" if self.back_to_first_s is None else f"{self.back_to_first_s:.2f}"
        return [self.scenario, str(self.taken), str(self.delivered), str(self.duplicated),
                str(self.dropped), lag, self.over_budget(), back, self.note]

    def line(self):
        c = self.cells()
        return (f"{c[0]}: taken {c[1]}, delivered {c[2]}, duplicated {c[3]}, dropped {c[4]}, "
                f"loop lag p50/p99/max {c[5]} ms{' (' + c[6] + ')' if c[6] else ''}"
                + (f", broker back -> first reading delivered {c[7]} s" if c[7] else "")
                + (f"; {c[8]}" if c[8] else ""))


HEADER = ["scenario", "taken", "delivered", "dup", "dropped", "lag p50/p99/max ms",
          "over budget", "back->1st s", "notes"]


def figures(scenario, node, subs, back_to_first_s=None, note=""):
    """The Figures of a node run; `subs` are the subscribers that count (not timing watchers).

    Readings are counted up to the highest seq delivered: the node goes on sampling while the
    figures are taken, and a reading still on its way then is neither lost nor delivered yet.
    """
    got = arrivals(subs, node.topics)
    last = max((p["seq"] for p in got), default=0)
    distinct = {p["seq"] for p in got}
    logged = [r["dropped"] for r in telemetry_log(node)]
    dropped = max([telemetry_dropped(subs, node.topics) or 0] + logged)
    n_taken = sum(1 for _, seq in taken(node) if seq <= last)
    return Figures(scenario, n_taken, len(distinct), len(got) - len(distinct), dropped,
                   worst_lag(node), back_to_first_s, note)


def format_table(rows, title="fault-injection figures"):
    cells = [HEADER] + [r.cells() for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADER) - 1)]
    out = [f"=== {title} (loop-lag budget p99 <= {LAG_BUDGET_P99_MS} ms, max <= "
           f"{LAG_BUDGET_MAX_MS} ms: printed, not asserted)"]
    for row in cells:
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    return "\n".join(out)


def figures_table(title):
    """(rows, record, fixture) for a test module: record(fig) prints one scenario's figures and
    keeps them in rows; the module-scoped autouse fixture prints them all as one table when the
    module ends (shown with or without -s). Bind the fixture in the module's namespace."""
    rows = []

    def record(fig):
        rows.append(fig)
        print("\n" + fig.line())
        return fig

    @pytest.fixture(scope="module", autouse=True)
    def table(request):
        yield
        if not rows:
            return
        text = "\n" + format_table(rows, title)
        capman = request.config.pluginmanager.getplugin("capturemanager")
        if capman is None:
            print(text)
            return
        with capman.global_and_fixture_disabled():
            print(text)

    return rows, record, table


DELIVERY_TIMEOUT_S = 30  # for the outbox to drain once a broker is back (backoff <= 8 s + resends)


def on_loopback_only(node):
    # The node must never reach off this machine: an IP literal broker and no NTP.
    assert node.cfg["mqtt"]["host"] == "127.0.0.1", node.cfg["mqtt"]
    assert (node.cfg.get("ntp") or {}).get("server") is None, node.cfg.get("ntp")


def finish_lag(node):
    """Wait for the telemetry record whose loop-lag window holds the last reconnect."""
    connects = node.find(CONNECTED_RX)
    t = connects[-1].string.t if connects else time.monotonic()
    wait_telemetry_after(node, t, node.cfg["telemetry_interval_s"] + 2)
