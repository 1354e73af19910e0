"""machine for the simulated ESP32: Pin, Signal, I2S, Timer, WDT, resets and the chip's identity.

Names, signatures, constants and exceptions follow the ESP32 port, so the app that runs here
runs unchanged on the board. Inputs come from the environment (see docs/ARCHITECTURE.md):
SIM_AUDIO feeds I2S in real time, SIM_UID is unique_id(). Resets end the process with the exit
codes in _simenv and leave their cause for the next start's reset_cause(). SIM_PIN_LOG names a
file that gets a line "<ticks_ms> <gpio> <level>" whenever a pin's output level changes (and
"<ticks_ms> <gpio> #rrggbb" when a WS2812 on it changes colour, see neopixel), so a test (or a
person) can see what an LED did.
"""

import io
import os
import time

import _audio
import _dhtwire
import _simenv
import micropython
from _simenv import (  # noqa: F401  (re-exported, as the board's machine has them)
    DEEPSLEEP_RESET,
    HARD_RESET,
    PWRON_RESET,
    SOFT_RESET,
    WDT_RESET,
)
from micropython import const

_EPERM = const(1)
_EBADF = const(9)
_EINVAL = const(22)
_MP_STREAM_POLL = const(3)
_POLL_RD = const(0x0001)
_POLL_WR = const(0x0004)

# The ESP32 port reads I2S RX as 32-bit stereo frames whatever the format, in DMA buffers of
# 256 frames; `ibuf` is the size of that DMA ring in those 8-byte frames, so it holds
# ibuf // 8 samples of any format (at least 2 buffers). Samples become readable one whole DMA
# buffer at a time, and a full ring loses its oldest buffer: both are modelled below.
_DMA_FRAMES = const(256)
_DMA_FRAME_BYTES = const(8)
_MIN_DMA_BUFFERS = const(2)  # the port rounds up to the two ESP-IDF needs

_DEFAULT_UID = b"\x24\x0a\xc4\x5e\x1a\x70"  # an Espressif MAC: 24:0a:c4 is their OUI
_FREQS_MHZ = (20, 40, 80, 160, 240)
_freq_hz = [160_000_000]
_uid = []


def reset_cause():
    return _simenv.reset_cause()


def reset():
    """Reboot the chip: here, end the process with exit code 4; the next start sees HARD_RESET."""
    _simenv.record_cause(HARD_RESET)
    _simenv.die(_simenv.EXIT_RESET, "machine.reset()")


def soft_reset():
    """Restart the interpreter: exit code 5, and the next start's reset_cause() is SOFT_RESET."""
    _simenv.record_cause(SOFT_RESET)
    _simenv.die(_simenv.EXIT_SOFT_RESET, "machine.soft_reset()")


def unique_id():
    if not _uid:
        text = _simenv.env("SIM_UID")
        if text is None:
            _uid.append(_DEFAULT_UID)
        else:
            try:
                uid = bytes.fromhex(text.replace(":", ""))
            except ValueError:
                uid = b""
            if not uid:
                _simenv.config_error("SIM_UID", "%r is not a hex string like 240ac45e1a70"
                                     % text)
            _uid.append(uid)
    return _uid[0]


def freq(hz=None):
    if hz is None:
        return _freq_hz[0]
    if hz // 1_000_000 not in _FREQS_MHZ:
        raise ValueError("frequency must be 20MHz, 40MHz, 80Mhz, 160MHz or 240MHz")
    _freq_hz[0] = hz // 1_000_000 * 1_000_000


def idle():
    # The board yields to other FreeRTOS tasks; here a short sleep keeps polling loops from
    # spinning a host core.
    time.sleep_ms(1)


def disable_irq():
    return 0


def enable_irq(state=0):
    pass


# ---- Pin ------------------------------------------------------------------------------------

# GPIO numbers of the ESP32 and the ESP32-S3 together (the simulator stands for both).
_NO_GPIO = (24,)
_MAX_GPIO = const(48)
_pins = {}  # gpio -> [mode, pull, level]: like the board, Pin(n) twice is the same pin


def _open_pin_log():
    path = _simenv.env("SIM_PIN_LOG")
    if path is None:
        return None
    if not path.startswith("/"):
        path = _simenv.FLASH + "/" + path
    try:
        return open(path, "a")
    except OSError as e:
        _simenv.config_error("SIM_PIN_LOG", "cannot append to %s (%s)" % (path, e))


# Opened at import (_firmware imports machine first), so a bad path stops the board before the
# app runs; appended to, so the lines of successive boots of one flash folder follow each other.
_pin_log = _open_pin_log()


def _log_output(gpio, shown):
    """A SIM_PIN_LOG line: what an output shows from now (a level; a WS2812's colours)."""
    if _pin_log is not None:
        _pin_log.write("%d %d %s\n" % (time.ticks_ms(), gpio, shown))


def _set_level(gpio, st, level):
    if level != st[2]:
        _log_output(gpio, level)
    st[2] = level
    _dhtwire.driven(gpio, st[0], level)  # a DHT on the line answers a start pulse


def time_pulse_us(pin, pulse_level, timeout_us=1_000_000):
    """The DHT line's pulses (_dhtwire); a line without a DHT frame stays high."""
    return _dhtwire.time_pulse_us(pin._id, pulse_level, timeout_us)


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_DOWN = 1
    PULL_UP = 2
    IRQ_RISING = 1
    IRQ_FALLING = 2
    WAKE_LOW = 4
    WAKE_HIGH = 5
    DRIVE_0 = 0
    DRIVE_1 = 1
    DRIVE_2 = 2
    DRIVE_3 = 3

    def __init__(self, id, mode=-1, pull=-1, *, value=None, drive=-1, hold=None):
        if not isinstance(id, int) or not 0 <= id <= _MAX_GPIO or id in _NO_GPIO:
            raise ValueError("invalid pin")
        self._id = id
        if id not in _pins:
            _pins[id] = [Pin.IN, None, 0]
        self.init(mode, pull, value=value, drive=drive, hold=hold)

    def init(self, mode=-1, pull=-1, *, value=None, drive=-1, hold=None):
        st = _pins[self._id]
        if mode != -1:
            if mode not in (Pin.IN, Pin.OUT, Pin.OPEN_DRAIN, None):
                raise ValueError("invalid pin mode")
            st[0] = mode
        if pull != -1:
            st[1] = pull
        if value is not None:
            _set_level(self._id, st, 1 if value else 0)

    def value(self, x=None):
        st = _pins[self._id]
        if x is not None:
            _set_level(self._id, st, 1 if x else 0)
            return None
        if st[0] == Pin.IN:
            return 1 if st[1] == Pin.PULL_UP else 0  # nothing drives an input: its pull wins
        return st[2]

    def __call__(self, x=None):
        return self.value(x)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def __repr__(self):
        return "Pin(%d)" % self._id


class Signal:
    def __init__(self, pin, *args, invert=False, **kwargs):
        self._pin = pin if isinstance(pin, Pin) else Pin(pin, *args, **kwargs)
        self._invert = bool(invert)

    def value(self, x=None):
        if x is None:
            return self._pin.value() ^ self._invert
        self._pin.value(bool(x) ^ self._invert)

    def __call__(self, x=None):
        return self.value(x)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)


# ---- I2S ------------------------------------------------------------------------------------

_ENOMEM = const(12)
_I2S_FAULTS = ("ok", "fail", "stall")


def i2s_fault():
    """SIM_I2S: "ok"; "fail": I2S() raises OSError(ENOMEM) as a driver without DMA memory
    does; "stall": the microphone never delivers a sample (a broken clock line)."""
    fault = _simenv.env("SIM_I2S", "ok")
    if fault not in _I2S_FAULTS:
        _simenv.config_error("SIM_I2S", "%r is not one of %s" % (fault, ", ".join(_I2S_FAULTS)))
    return fault


_i2s_stalled = i2s_fault() == "stall"

_i2s_ports = {}  # id -> the live I2S: a new I2S on the same id replaces it, as on the board


_REBASE_US = const(100_000_000)


class I2S(io.IOBase):
    """I2S controller; RX delivers SIM_AUDIO in real time at `rate`, like the DMA would.

    Blocking mode (the default) fills the whole buffer, waiting for the samples to arrive.
    The first ioctl() call switches to asyncio mode, as on the board: readinto() then returns
    at once with the samples already in whole DMA buffers (possibly 0), and poll reports
    readable while there are some. If the app falls behind by more than the DMA ring, the
    oldest samples are lost and counted in `overruns` (DMA buffers) and `lost_samples`: two
    simulator-only attributes, absent on the board.
    """

    RX = 9  # I2S_MODE_MASTER | I2S_MODE_RX, as the ESP32 port defines them
    TX = 5
    MONO = 0
    STEREO = 1

    def __init__(self, id, *, sck, ws, sd, mode, bits, format, rate, ibuf, mck=None):
        if id not in (0, 1):
            raise ValueError("I2S(%d) does not exist" % id)
        self._id = id
        self._src = None
        self.overruns = 0
        self.lost_samples = 0
        self.init(sck=sck, ws=ws, sd=sd, mode=mode, bits=bits, format=format, rate=rate,
                  ibuf=ibuf, mck=mck)

    def init(self, *, sck, ws, sd, mode, bits, format, rate, ibuf, mck=None):
        for p in (sck, ws, sd):
            if not isinstance(p, Pin):
                raise ValueError("expecting a pin")
        if mode not in (I2S.RX, I2S.TX):
            raise ValueError("invalid mode")
        if bits not in (16, 32):
            raise ValueError("invalid bits")
        if format not in (I2S.MONO, I2S.STEREO):
            raise ValueError("invalid format")
        if rate <= 0:
            raise ValueError("invalid rate")
        if ibuf <= 0:
            raise ValueError("invalid ibuf")
        dma_buffers = max(_MIN_DMA_BUFFERS, ibuf // (_DMA_FRAMES * _DMA_FRAME_BYTES))
        old = _i2s_ports.get(self._id)
        if old is not None:
            old.deinit()
        if self._src is not None:
            self.deinit()
        self._mode = mode
        self._rate = rate
        self._width = bits // 8
        self._frame_bytes = self._width * (2 if format == I2S.STEREO else 1)
        self._capacity = dma_buffers * _DMA_FRAMES
        self._asyncio = False
        if i2s_fault() == "fail":
            # What the ESP32 port raises when the driver cannot get its DMA memory.
            raise OSError(_ENOMEM)
        self._src = _audio.open_source(bits, rate) if mode == I2S.RX else _audio.Silence()
        # Samples arrive from this instant: frame _base + k is complete at _t0 + k / rate. _pos
        # counts the frames read or lost so far.
        self._t0 = time.ticks_us()
        self._base = 0
        self._pos = 0
        _i2s_ports[self._id] = self

    def deinit(self):
        if self._src is None:
            return
        close = getattr(self._src, "close", None)
        if close:
            close()
        self._src = None
        if _i2s_ports.get(self._id) is self:
            del _i2s_ports[self._id]

    def _completed(self):
        """Frames in DMA buffers completed since the start (a multiple of _DMA_FRAMES)."""
        if _i2s_stalled:
            return 0  # no bit clock: the DMA never completes a buffer
        elapsed_us = time.ticks_diff(time.ticks_us(), self._t0)
        # ticks_diff() is only right within half the ticks period: 537 s on a 32-bit port, where
        # the microphone fell silent after 9 minutes. So the origin moves on every 100 s, by an
        # exact number of frames.
        while elapsed_us >= _REBASE_US:
            self._t0 = time.ticks_add(self._t0, _REBASE_US)
            self._base += self._rate * (_REBASE_US // 1_000_000)
            elapsed_us -= _REBASE_US
        total = self._base + elapsed_us * self._rate // 1_000_000
        return total // _DMA_FRAMES * _DMA_FRAMES

    def _available(self):
        """Frames readable now; drops the oldest beyond the DMA ring, as an overrun does."""
        avail = self._completed() - self._pos
        if avail > self._capacity:
            lost = avail - self._capacity
            self._src.skip(lost)
            self._pos += lost
            self.lost_samples += lost
            self.overruns += (lost + _DMA_FRAMES - 1) // _DMA_FRAMES
            avail = self._capacity
        return avail

    def _wait_next_buffer(self):
        frames = self._completed() + _DMA_FRAMES - self._base
        due_us = (frames * 1_000_000 + self._rate - 1) // self._rate
        wait_us = due_us - time.ticks_diff(time.ticks_us(), self._t0)
        if wait_us > 0:
            time.sleep_us(wait_us)

    def _check(self, mode):
        if self._src is None:
            raise OSError(_EBADF)
        if self._mode != mode:
            raise OSError(_EPERM)

    def readinto(self, buf):
        self._check(I2S.RX)
        size = len(buf)
        fb = self._frame_bytes
        if size % fb:
            raise OSError(_EINVAL)
        want = size // fb
        got = 0
        while got < want:
            n = min(want - got, self._available())
            if n:
                self._src.fill(buf, got * fb, n, self._width, fb)
                self._pos += n
                got += n
            elif self._asyncio:
                break
            else:
                self._wait_next_buffer()
        return got * fb

    def write(self, buf):
        # TX is accepted and discarded: this node only listens.
        self._check(I2S.TX)
        if len(buf) % self._frame_bytes:
            raise OSError(_EINVAL)
        return len(buf)

    def ioctl(self, req, arg):
        # Only asyncio calls ioctl, and on the board that call switches the port to asyncio
        # mode. Every other request must fail: answering GET_FILENO would make the unix port's
        # poll() wait on fd 0 (stdin) instead of asking this object.
        self._asyncio = True
        if req != _MP_STREAM_POLL or self._src is None:
            return -_EINVAL
        ret = 0
        if arg & _POLL_RD:
            if self._mode != I2S.RX:
                return -_EPERM
            if self._available() > 0:
                ret |= _POLL_RD
        if arg & _POLL_WR:
            if self._mode != I2S.TX:
                return -_EPERM
            ret |= _POLL_WR
        return ret

    def irq(self, handler):
        raise NotImplementedError("sim: I2S non-blocking mode (irq) is not simulated")

    def __repr__(self):
        return "I2S(id=%d, rate=%d, bits=%d)" % (self._id, self._rate, self._width * 8)


# ---- Timer ----------------------------------------------------------------------------------

_TIMERS = const(4)  # two groups of two hardware timers, on the ESP32 and the ESP32-S3
_NO_PERIOD_MS = const(0xFFFFFFFF)  # the port's default: init() without period or freq
_LONGEST_MS = const(1 << 29)  # ticks_add() takes no more; an alarm that far off never fires here
# id -> [generation, callback, one-shot pending, the Timer]: like the board, Timer(n) twice is
# the same timer. The alarm thread of an older init() sees a newer generation and ends: a
# thread cannot be stopped.
_timer_states = {}


class Timer:
    """A hardware timer with a soft callback, as on the ESP32: the alarm only schedules the
    callback (micropython.schedule), and the main thread runs it between two bytecodes.

    A thread plays the alarm. The unix port runs scheduled callbacks while the main thread is
    in time.sleep*() or busy, but not while it waits in select.poll (an asyncio loop with
    nothing to do): there a callback is late until the poll returns, where the board's would
    not be. Like the board, a callback that finds the schedule queue full is dropped.
    """

    ONE_SHOT = 0
    PERIODIC = 1

    def __init__(self, id, **kwargs):
        if not isinstance(id, int) or not 0 <= id < _TIMERS:
            raise ValueError("invalid Timer number, max %d" % _TIMERS)
        self._id = id
        if id not in _timer_states:
            _timer_states[id] = [0, None, False, self]
        if kwargs:
            self.init(**kwargs)

    def init(self, *, mode=PERIODIC, callback=None, period=_NO_PERIOD_MS, freq=None, hard=False):
        if hard:
            raise ValueError("hard Timers are not implemented")
        period_ms = 1000 // freq if freq is not None else period
        self.deinit()
        st = _timer_states[self._id]
        st[1] = callback
        if period_ms < _LONGEST_MS:
            import _thread

            st[2] = mode == Timer.ONE_SHOT and callback is not None
            _thread.start_new_thread(_simenv.run_thread,
                                     (_alarm, (self, st, st[0], period_ms, mode)))

    def deinit(self):
        st = _timer_states[self._id]
        st[0] += 1
        st[2] = False

    def __repr__(self):
        return "Timer(%d)" % self._id


def _fire(st):
    # Scheduled: runs in the main thread, between two bytecodes.
    callback = st[1]
    if callback is None:
        return
    try:
        callback(st[3])
    except SystemExit as e:  # machine.reset() in the callback: see _simenv.exit_from_callback
        _simenv.exit_from_callback(e)


def wait_for_one_shot():
    """After main.py has ended, the board sits at the REPL, where a one-shot timer still fires
    (boot.py arms one while an update is on trial): _firmware waits here while one is armed.
    Returns the exit code its callback ended the run with (machine.reset()), or None."""
    if not any(st[2] for st in _timer_states.values()):
        return None
    _simenv.say("a one-shot Timer is armed: waiting for it, as the board would at the REPL")
    try:
        while any(st[2] for st in _timer_states.values()):
            time.sleep_ms(20)
        time.sleep_ms(1000)  # its callback runs from the schedule; a reset in it, soon after
    except KeyboardInterrupt:
        return _simenv.interrupted_code()
    return None


def _alarm(timer, st, gen, period_ms, mode):
    due = time.ticks_add(time.ticks_ms(), period_ms)
    while True:
        wait_ms = time.ticks_diff(due, time.ticks_ms())
        if wait_ms > 0:
            _simenv.thread_sleep_ms(wait_ms)
        if st[0] != gen:
            return
        if st[1] is not None:
            try:
                micropython.schedule(_fire, st)
            except RuntimeError:  # "schedule queue full"
                pass
        if mode == Timer.ONE_SHOT:
            st[2] = False
            return
        # From the previous alarm, not from now: a late thread does not stretch the period.
        due = time.ticks_add(due, period_ms)


# ---- RTC ------------------------------------------------------------------------------------


class RTC:
    """The chip's clock: time.time()/gmtime() and the TLS certificate checks read it.

    Under SIM_CLOCK=board (the default of sim/host) it starts at 2000-01-01 on power-on and
    keeps running across resets, as the ESP32's RTC does, and setting it moves the process's
    clock (libfaketime). Under SIM_CLOCK=host it is the host's clock and a set is only noted.
    """

    def datetime(self, dt=None):
        if dt is None:
            t = time.gmtime()
            return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0)
        when = "%04d-%02d-%02dT%02d:%02d:%02dZ" % (dt[0], dt[1], dt[2], dt[4], dt[5], dt[6])
        if _simenv.clock_mode() != "board":
            _simenv.say("RTC set to %s: ignored, the simulator keeps the host's clock" % when)
            return None
        sub_us = dt[7] if len(dt) > 7 else 0
        _simenv.set_clock(_simenv.epoch_s(dt[0], dt[1], dt[2], dt[4], dt[5], dt[6])
                          + sub_us / 1_000_000)
        _simenv.say("RTC set to %s" % when)
        return None


# ---- WDT ------------------------------------------------------------------------------------

# [last feed ticks_ms, timeout ms]: list slots, so the watchdog thread and the app share them
# without touching any dict (this port's threads run without a GIL).
_wdt = [0, 0]
_wdt_thread = []
_WDT_RESEND_MS = const(1000)  # between interrupts of a main thread that does not stop
_WDT_INTERRUPTS = const(3)  # then the process is killed


class WDT:
    """The task watchdog. A thread watches the feed time, so it fires even when the app's
    event loop is stuck in a blocking call, as the board's hardware timer would. As on the
    ESP32 it cannot be stopped, and a soft reset leaves it running (_simenv.save_wdt)."""

    def __init__(self, id=0, timeout=5000):
        if id != 0:
            raise ValueError("WDT(%d) doesn't exist" % id)
        if timeout <= 0:
            raise ValueError("WDT timeout too short")
        # A second WDT re-arms the one watchdog with the new timeout, as on the ESP32.
        _arm(timeout, time.ticks_ms())

    def feed(self):
        _wdt[0] = time.ticks_ms()
        _simenv.save_wdt(_wdt[1], _wdt[0])


def _arm(timeout, last_feed):
    _wdt[0] = last_feed
    _wdt[1] = timeout
    _simenv.save_wdt(timeout, last_feed)
    if not _wdt_thread:
        import _thread

        _wdt_thread.append(_thread.start_new_thread(_simenv.run_thread, (_watch, ())))


def _resume_wdt():
    """A watchdog armed before a soft reset goes on from its last feed."""
    state = _simenv.load_wdt()
    if state is None:
        return
    timeout, last_feed = state
    _simenv.note("WDT still running after the soft reset: timeout %d ms, last fed %d ms ago"
                % (timeout, time.ticks_diff(time.ticks_ms(), last_feed)))
    _arm(timeout, last_feed)


def _watch():
    while True:
        timeout = _wdt[1]
        _simenv.thread_sleep_ms(max(5, min(100, timeout // 10)))
        late = time.ticks_diff(time.ticks_ms(), _wdt[0])
        if late >= timeout:
            break
    _simenv.wdt_fired[0] = True
    _simenv.record_cause(WDT_RESET)  # and clears the saved watchdog: the chip restarts
    _simenv.say("WDT fired: not fed for %d ms (timeout %d ms)" % (late, timeout))
    # This port has no _exit() for a thread to end the process, so the main thread is
    # interrupted with SIGINT: that ends whatever blocking call it is stuck in, and _firmware,
    # seeing wdt_fired, exits with code 3.
    for _ in range(_WDT_INTERRUPTS):
        _simenv.interrupt_main()
        _simenv.thread_sleep_ms(_WDT_RESEND_MS)
    _simenv.say("the app did not stop on the WDT interrupt: killing the process")
    os.system("kill -KILL $PPID")


_resume_wdt()
