"""Sample sources behind the simulated machine.I2S: a WAV file, a sine generator or silence.

SIM_AUDIO chooses one: a 16- or 32-bit PCM mono WAV path (looped), `sine:<freq_hz>:<rms_dbfs>`
(default `sine:1000:-20`) or `silence`. A source writes little-endian samples straight into the
app's buffer in the I2S slot format (16 or 32 bits, optionally every other slot for stereo), so
the simulator adds nothing to the heap per read. Private to sim/board/.
"""

import math
import struct
from array import array

import micropython
from _simenv import config_error, env, say

_DEFAULT = "sine:1000:-20"

# Sine: a direct digital synthesiser. One period of 256 points plus a guard point for the
# linear interpolation, indexed by the top 8 bits of a 30-bit phase: any frequency, exact when
# the period is a whole number of table steps. The interpolation's error is 82 dB below the
# sine (the INMP441's own distortion is far above that), and the table takes 1 KB of the heap,
# which the board's microphone does not. Values are biased positive: viper reads ptr32 unsigned.
_TABLE_BITS = 8
_TABLE_SIZE = 1 << _TABLE_BITS
_PHASE_BITS = 30
_PHASE_MASK = (1 << _PHASE_BITS) - 1

_WAVE_FORMAT_PCM = 1
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
_SCRATCH_BYTES = 1024  # WAV reads go through this; big enough that file reads stay cheap

_spec = None  # parsed SIM_AUDIO, cached: _firmware checks it once before the app runs


@micropython.viper
def _zero(dst: ptr8, off: int, nbytes: int):
    for i in range(off, off + nbytes):
        dst[i] = 0


@micropython.viper
def _sine_fill(dst: ptr8, off: int, n: int, table: ptr32, bias: int, phase: int, inc: int,
               width: int, stride: int, shift: int) -> int:
    # Constants stay below 2**30 so this compiles to native code on any host, 32-bit included.
    o = off
    for _ in range(n):
        i = phase >> 22  # _PHASE_BITS - _TABLE_BITS: viper needs the literal
        a = table[i] - bias
        # 12 bits of the fraction are plenty to interpolate; a step of a full-scale 24-bit sine
        # is below 2**18, so the product stays below 2**30.
        f = (phase >> 10) & 0xFFF
        v = (a + (((table[i + 1] - bias - a) * f + 0x800) >> 12)) << shift
        dst[o] = v
        dst[o + 1] = v >> 8
        p = 2
        if width == 4:
            dst[o + 2] = v >> 16
            dst[o + 3] = v >> 24
            p = 4
        while p < stride:
            dst[o + p] = 0
            p += 1
        o += stride
        phase = (phase + inc) & 0x3FFFFFFF
    return phase


@micropython.viper
def _convert(dst: ptr8, off: int, src: ptr8, n: int, sw: int, width: int, stride: int):
    # Little-endian samples of sw bytes into slots of width bytes: a 16-bit sample goes to the
    # top of a 32-bit slot, a 32-bit sample keeps its top 16 bits in a 16-bit slot.
    o = off
    s = 0
    for _ in range(n):
        if sw == width:
            for k in range(width):
                dst[o + k] = src[s + k]
        elif sw == 2:
            dst[o] = 0
            dst[o + 1] = 0
            dst[o + 2] = src[s]
            dst[o + 3] = src[s + 1]
        else:
            dst[o] = src[s + 2]
            dst[o + 1] = src[s + 3]
        p = width
        while p < stride:
            dst[o + p] = 0
            p += 1
        o += stride
        s += sw


def _bad_spec(spec):
    config_error("SIM_AUDIO", "%r is not a WAV path, 'sine:<freq_hz>:<rms_dbfs>' or 'silence'"
                 % spec)


def _read_exact(f, n):
    data = f.read(n)
    if data is None or len(data) < n:
        raise ValueError("truncated")
    return data


def _parse_wav(path):
    """The (sample width in bytes, rate, data offset, frame count) of a PCM mono WAV."""
    try:
        f = open(path, "rb")
    except OSError as e:
        config_error("SIM_AUDIO", "cannot open WAV file %s (%s)" % (path, e))
    try:
        try:
            riff, _, wave = struct.unpack("<4sI4s", _read_exact(f, 12))
            if riff != b"RIFF" or wave != b"WAVE":
                config_error("SIM_AUDIO", "%s is not a RIFF/WAVE file" % path)
            fmt = None
            while True:
                cid, size = struct.unpack("<4sI", _read_exact(f, 8))
                if cid == b"fmt ":
                    body = _read_exact(f, size + (size & 1))
                    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
                    if tag == _WAVE_FORMAT_EXTENSIBLE and size >= 26:
                        tag = struct.unpack("<H", body[24:26])[0]  # the sub-format GUID
                    fmt = (tag, channels, rate, bits)
                elif cid == b"data":
                    if fmt is None:
                        config_error("SIM_AUDIO", "%s: data chunk before the fmt chunk" % path)
                    offset = f.tell()
                    break
                else:
                    f.seek(size + (size & 1), 1)
            end = f.seek(0, 2)  # a header may promise more data than the file holds
        except ValueError:
            config_error("SIM_AUDIO", "%s is truncated or not a WAV file" % path)
    finally:
        f.close()
    tag, channels, rate, bits = fmt
    if tag != _WAVE_FORMAT_PCM:
        config_error("SIM_AUDIO", "%s is not integer PCM (format tag %d)" % (path, tag))
    if channels != 1:
        config_error("SIM_AUDIO", "%s has %d channels; only mono is simulated" % (path, channels))
    if bits not in (16, 32):
        config_error("SIM_AUDIO", "%s has %d-bit samples; only 16- or 32-bit PCM is simulated"
                     % (path, bits))
    width = bits // 8
    frames = min(size, end - offset) // width
    if frames == 0:
        config_error("SIM_AUDIO", "%s has no samples" % path)
    return width, rate, offset, frames


def spec():
    """SIM_AUDIO, parsed and checked once: ('sine', hz, dbfs), ('silence',) or ('wav', ...)."""
    global _spec
    if _spec is None:
        text = env("SIM_AUDIO", _DEFAULT)
        if text == "silence":
            _spec = ("silence",)
        elif text.startswith("sine:"):
            parts = text.split(":")
            try:
                hz, dbfs = float(parts[1]), float(parts[2])
            except (IndexError, ValueError):
                _bad_spec(text)
            if len(parts) != 3 or not hz > 0:
                _bad_spec(text)
            _spec = ("sine", hz, dbfs)
        elif ":" in text and "/" not in text:
            _bad_spec(text)  # a mistyped generator, not a file name
        else:
            _spec = ("wav", text) + _parse_wav(text)
    return _spec


class Silence:
    def fill(self, dst, off, n, width, stride):
        _zero(dst, off, n * stride)

    def skip(self, n):
        pass


class Sine:
    """A sine of RMS `dbfs` dBFS; 32-bit slots carry 24-bit data, low byte 0 (an INMP441)."""

    def __init__(self, hz, dbfs, bits, rate):
        if hz >= rate / 2:
            config_error("SIM_AUDIO", "sine at %g Hz is above the Nyquist frequency of the "
                         "I2S rate %d Hz" % (hz, rate))
        # RMS -> amplitude: a sine's peak is sqrt(2) times its RMS. 32-bit slots are built
        # from 24-bit values shifted left by 8, so full scale is 2**23 before the shift.
        full = 32768 if bits == 16 else 1 << 23
        amp = 10 ** (dbfs / 20) * full * math.sqrt(2)
        top = full - 1
        t = array("I", bytes(4 * (_TABLE_SIZE + 1)))
        step = 2 * math.pi / _TABLE_SIZE
        for i in range(_TABLE_SIZE + 1):
            t[i] = full + max(-top, min(top, round(amp * math.sin(i * step))))
        self._table = t
        self._bias = full
        self._shift = 0 if bits == 16 else 8
        self._inc = round(hz * (1 << _PHASE_BITS) / rate) & _PHASE_MASK
        self._phase = 0

    def fill(self, dst, off, n, width, stride):
        self._phase = _sine_fill(dst, off, n, self._table, self._bias, self._phase, self._inc,
                                 width, stride, self._shift)

    def skip(self, n):
        self._phase = (self._phase + n * self._inc) & _PHASE_MASK


class Wav:
    """A WAV file streamed from disk and looped, so a long file costs no heap."""

    def __init__(self, path, width, file_rate, offset, frames, rate):
        if file_rate != rate:
            say("SIM_AUDIO %s is %d Hz; its samples are delivered at the I2S rate %d Hz"
                % (path, file_rate, rate))
        self._f = open(path, "rb")
        self._sw = width
        self._offset = offset
        self._frames = frames
        self._pos = 0
        self._scratch = bytearray(_SCRATCH_BYTES)
        self._f.seek(offset)

    def fill(self, dst, off, n, width, stride):
        sw = self._sw
        mv = memoryview(self._scratch)
        while n:
            k = min(n, self._frames - self._pos, _SCRATCH_BYTES // sw)
            got = 0
            while got < k * sw:
                r = self._f.readinto(mv[got:k * sw])
                if not r:
                    raise OSError(5)  # EIO: the file shrank under the simulator
                got += r
            _convert(dst, off, mv, k, sw, width, stride)
            off += k * stride
            n -= k
            self._pos += k
            if self._pos == self._frames:
                self._pos = 0
                self._f.seek(self._offset)

    def skip(self, n):
        self._pos = (self._pos + n) % self._frames
        self._f.seek(self._offset + self._pos * self._sw)

    def close(self):
        self._f.close()


def open_source(bits, rate):
    """The source SIM_AUDIO names, producing samples for I2S slots of `bits` at `rate`."""
    s = spec()
    if s[0] == "silence":
        return Silence()
    if s[0] == "sine":
        return Sine(s[1], s[2], bits, rate)
    return Wav(s[1], s[2], s[3], s[4], s[5], rate)
