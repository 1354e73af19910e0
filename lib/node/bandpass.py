"""The filter designs of node.bands, computed once when the octave bank is made and unloaded
after (node.bands.OctaveBank): each band's band-pass from an analog prototype, and the gains
that calibrate the band levels. Pure (complex arithmetic only): CPython runs it too.
"""

import math

_G = 10 ** 0.3  # the base-10 octave (IEC 61260-1)


def centre(k):
    """The exact midband frequency of the octave k octaves from 1 kHz (base 10)."""
    return 1000 * _G**k


def _prototype(order, ripple_db):
    """The analog low-pass prototype's poles in the upper half-plane (Butterworth when
    ripple_db is 0, else Chebyshev type I), each pair represented once."""
    out = []
    if ripple_db:
        mu = math.asinh(1 / math.sqrt(10 ** (ripple_db / 10) - 1)) / order
        re, im = math.sinh(mu), math.cosh(mu)
    else:
        re = im = 1.0
    for k in range(1, order // 2 + order % 2 + 1):
        theta = (2 * k - 1) * math.pi / (2 * order)
        out.append(complex(-re * math.sin(theta), im * math.cos(theta)))
    return out


def design(centre_hz, rate_hz, order, ripple_db, octaves, q):
    """The band-pass around centre_hz at rate_hz: [(a1, a2), ...] with q fraction bits, ascending
    a2 (pole
    radius), from the prototype by the low-pass to band-pass and bilinear transforms, with the
    passband edges centre * G**(+-octaves/2) prewarped."""
    edge = [2 * rate_hz * math.tan(math.pi * centre_hz * _G ** (s * octaves / 2) / rate_hz)
            for s in (-1, 1)]
    w02, width = edge[0] * edge[1], edge[1] - edge[0]
    sections = []
    for p in _prototype(order, ripple_db):
        pb = p * width
        d = (pb * pb - 4 * w02) ** 0.5
        # a real prototype pole gives one conjugate pair, a complex one two
        roots = ((pb + d) / 2,) if abs(p.imag) < 1e-9 else ((pb + d) / 2, (pb - d) / 2)
        for s in roots:
            z = (2 * rate_hz + s) / (2 * rate_hz - s)
            sections.append((round(-2 * z.real * (1 << q)), round(abs(z) ** 2 * (1 << q))))
    sections.sort(key=lambda c: c[1])
    return sections


def gain(sections, shifts, f_hz, rate_hz, q):
    """|H| at f_hz of the quantised cascade (q fraction bits), shifts included."""
    w = 2 * math.pi * f_hz / rate_hz
    z1 = complex(math.cos(w), -math.sin(w))  # 1/z
    h = 1
    for k, (a1, a2) in enumerate(sections):
        h *= (1 - z1 * z1) / (1 + a1 / (1 << q) * z1 + a2 / (1 << q) * z1 * z1)
        if k:
            h /= 1 << shifts[k - 1]
    return abs(h)


def half_band(coefficients, f_hz, rate_hz):
    """|H| at f_hz of the half-band at rate_hz with Q12 allpass coefficients (c0, c1):
    (A0(z^2) + A1(z^2)/z) / 2, A(z^2) = (c + z^-2) / (1 + c z^-2)."""
    w = 2 * math.pi * f_hz / rate_hz
    z2 = complex(math.cos(2 * w), -math.sin(2 * w))  # 1/z**2
    a = [(c / 4096 + z2) / (1 + c / 4096 * z2) for c in coefficients]
    return abs(a[0] + complex(math.cos(w), -math.sin(w)) * a[1]) / 2
