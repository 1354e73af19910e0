/* Scalar C reference for tools/bench.py: the whole sound chain of one int16 frame, in the same
 * int32 arithmetic as the viper kernels (lib/node/dsp.py, weighting.py, bands.py): RMS and peak,
 * the A/C cascade with its sub-blocks (energies, Fast, the percentile histogram, C peak), and the
 * octave bank with its half-band decimation.
 *
 * Usage: bench_chain STATE.txt FRAME.raw REPEATS
 * STATE.txt: the meter's initial state as MicroPython made it (the filter designs come from
 * there): a line of the A/C state words, a line of the histogram (counts and log table), a line
 * of the bank's state words, then the offsets "name value" of the words used below.
 * Prints "<ns per sample>" then the three state lines after REPEATS frames, so that bench.py can
 * check that both computed the same. Layout constants are read from STATE.txt, so this file
 * follows the modules' layout without a copy of it.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAXW 4096
static int32_t a[MAXW], b[MAXW], scr[1024];
static uint16_t hist[2048];
static int na, nh, nb;
static int K[128];
static char names[128][32];
static int nk;

static int k(const char *name) {
    for (int i = 0; i < nk; i++) {
        if (!strcmp(names[i], name)) {
            return K[i];
        }
    }
    fprintf(stderr, "no constant %s\n", name);
    exit(2);
}

static int read_line(FILE *f, int32_t *dst, int max) {
    int n = 0;
    char line[65536];
    if (!fgets(line, sizeof line, f)) {
        return -1;
    }
    for (char *p = strtok(line, " \n"); p && n < max; p = strtok(NULL, " \n")) {
        dst[n++] = (int32_t)strtol(p, NULL, 10);
    }
    return n;
}

/* ---- RMS and peak (_frame16) */
static int64_t sum_sq;
static int32_t peak_sq;

static void rms(const int16_t *x, int n) {
    for (int i = 0; i < n; i++) {
        int32_t sq = (int32_t)x[i] * x[i];
        sum_sq += sq;
        if (sq > peak_sq) {
            peak_sq = sq;
        }
    }
}

/* ---- A and C (_a_filter, _a_sub_block) */
static int C_A_C, C_A_Y, C_A_E, C_A_XP, C_A_SUB, C_A_CSUM, C_A_CPK, C_A_FILL, C_A_M, C_A_FM,
    C_A_FX, C_A_MAXM, C_A_MAXX, C_A_MINM, C_A_MINX, C_A_NSUB, C_A_RUN, C_A_LVL, C_A_SUBE,
    C_A_SUBK, C_A_HBASE, C_A_HSHIFT, C_A_HTICK, C_A_HTOTAL, C_A_ASUM, C_A_HBINS, C_BIAS, C_P1, C_P2,
    C_P3, C_P4;

static void energy(int32_t *sums, int32_t y) {
    if ((y + 0x8000) >> 16) {
        int32_t x = (y + 128) >> 8;
        sums[2] += x * x;
        if (sums[2] >> 30) {
            sums[2] &= 0x3FFFFFFF;
            sums[3]++;
        }
    } else {
        sums[0] += y * y;
        if (sums[0] >> 30) {
            sums[0] &= 0x3FFFFFFF;
            sums[1]++;
        }
    }
}

static void sub_block(void) {
    int bias = C_BIAS;
    int32_t lo = a[C_A_SUB], hi = a[C_A_SUB + 1], blo = a[C_A_SUB + 2], bhi = a[C_A_SUB + 3];
    for (int off = 0; off < 4; off += 2) {
        int32_t add_lo = off ? blo : lo, add_hi = off ? bhi : hi;
        int32_t t = a[C_A_ASUM + off] + add_lo;
        a[C_A_ASUM + off + 1] += add_hi + (t >> 30);
        a[C_A_ASUM + off] = t & 0x3FFFFFFF;
    }
    int kk = 0;
    if (blo || bhi) {
        lo = blo + (hi << 14) + (lo >> 16);
        hi = bhi + (lo >> 30);
        lo &= 0x3FFFFFFF;
        kk = 8;
    }
    if (hi) {
        int b = 1;
        while (hi >> (2 * b - 1)) {
            b++;
        }
        lo = (hi << (30 - 2 * b)) + (lo >> (2 * b));
        kk += b;
    }
    a[C_A_SUBE] = lo;
    a[C_A_SUBK] = kk;
    a[C_A_SUB] = a[C_A_SUB + 1] = a[C_A_SUB + 2] = a[C_A_SUB + 3] = 0;
    int32_t fm, fx, acc = lo;
    if (a[C_A_RUN]) {
        fm = a[C_A_FM];
        fx = a[C_A_FX];
        if (kk > fx) {
            fm >>= 2 * (kk - fx);
            fx = kk;
        } else {
            acc >>= 2 * (fx - kk);
        }
        fm += (acc - fm) >> 5;
    } else {
        a[C_A_RUN] = 1;
        fm = acc;
        fx = kk;
    }
    while (fx > 0 && fm < 0x10000000) {
        fm <<= 2;
        fx--;
    }
    a[C_A_FM] = fm;
    a[C_A_FX] = fx;
    int n = a[C_A_NSUB];
    if (n == 0 || fx > a[C_A_MAXX] || (fx == a[C_A_MAXX] && fm > a[C_A_MAXM])) {
        a[C_A_MAXM] = fm;
        a[C_A_MAXX] = fx;
    }
    if (n == 0 || fx < a[C_A_MINX] || (fx == a[C_A_MINX] && fm < a[C_A_MINM])) {
        a[C_A_MINM] = fm;
        a[C_A_MINX] = fx;
    }
    a[C_A_NSUB] = n + 1;
    int32_t lvl = -bias;
    if (fm) {
        int bl = fx ? 29 : 1;
        while (fm >> bl) {
            bl++;
        }
        int32_t i = bl > 13 ? (fm >> (bl - 13)) & 4095 : (fm << (13 - bl)) & 4095;
        int32_t x = ((C_P4 * i) >> 12) + C_P3;
        x = ((x * i) >> 12) + C_P2;
        x = ((x * i) >> 12) + C_P1;
        lvl = ((((bl - 1) + 2 * fx) * 123302 + ((x * i) >> 12)) >> 8);
    }
    a[C_A_LVL] = lvl + bias;
    int32_t tick = a[C_A_HTICK]++;
    int shift = a[C_A_HSHIFT];
    if (!(tick & ((1 << shift) - 1))) {
        int i = (lvl - a[C_A_HBASE]) >> 4;
        int nbins = a[C_A_HBINS];
        i = i < 0 ? 0 : i >= nbins ? nbins - 1 : i;
        int32_t c = hist[i] + 1;
        if (c > 0xFFFF) {
            int32_t carry = 0, total = 0;
            for (int j = 0; j < nbins; j++) {
                int32_t t = hist[j] + carry;
                hist[j] = t >> 1;
                total += t >> 1;
                carry = t & 1;
            }
            a[C_A_HTOTAL] = total;
            a[C_A_HSHIFT] = shift + 1;
            c = hist[i] + 1;
        }
        hist[i] = c;
        a[C_A_HTOTAL]++;
    }
    a[C_A_FILL] = 0;
}

static void weighting(const int16_t *x, int n) {
    int bias = C_BIAS, m = a[C_A_M];
    int32_t c_lp = a[C_A_C], c1 = a[C_A_C + 1], c2 = a[C_A_C + 2], c3 = a[C_A_C + 3];
    int32_t y1 = a[C_A_Y] - bias, y2 = a[C_A_Y + 1] - bias, y3 = a[C_A_Y + 2] - bias,
            y4 = a[C_A_Y + 3] - bias, y5 = a[C_A_Y + 4] - bias, y6 = a[C_A_Y + 5] - bias;
    int32_t ea = a[C_A_E], ec = a[C_A_E + 1], xp = a[C_A_XP] - bias;
    int fill = a[C_A_FILL];
    for (int j = 0; j < n; j++) {
        int32_t xq = (int32_t)x[j] << 4, d, t;
        d = ((xq + xp) >> 1) - ((c_lp * y1) >> 9);
        xp = xq;
        t = y1 + (d >> 1);
        y1 += d;
        d = t - ((c_lp * y2) >> 9);
        y2 += d;
        d -= (c3 * y3) >> 16;
        y3 += d;
        t = c3 * y4 + ec;
        ec = t & 0xFFFF;
        d -= t >> 16;
        y4 += d;
        t = y4 < 0 ? -y4 : y4;
        if (t > a[C_A_CPK]) {
            a[C_A_CPK] = t;
        }
        energy(a + C_A_CSUM, y4);
        d -= (c2 * y5) >> 14;
        y5 += d;
        t = c1 * y6 + ea;
        ea = t & 0x7FF;
        d -= t >> 11;
        y6 += d;
        energy(a + C_A_SUB, y6);
        if (++fill == m) {
            sub_block();
            fill = 0;
        }
    }
    a[C_A_Y] = y1 + bias;
    a[C_A_Y + 1] = y2 + bias;
    a[C_A_Y + 2] = y3 + bias;
    a[C_A_Y + 3] = y4 + bias;
    a[C_A_Y + 4] = y5 + bias;
    a[C_A_Y + 5] = y6 + bias;
    a[C_A_E] = ea;
    a[C_A_E + 1] = ec;
    a[C_A_XP] = xp + bias;
    a[C_A_FILL] = fill;
}

/* ---- octave bank (_bank) */
static int C_K_NLEV, C_K_HEAD, C_LW, C_B_C, C_B_SH, C_B_FOUR, C_B_HB, C_B_X, C_B_Y, C_B_Q,
    C_B_HELD, C_B_HAS, C_B_LO, C_LIM;

static void fold(int32_t *s, int at, int32_t acc, int32_t carry, int32_t big, int32_t bigc,
                 int o) {
    int32_t y = s[at] + acc;
    s[at + 1] += carry + (y >> 30);
    s[at] = y & 0x3FFFFFFF;
    y = s[at + 2] + big;
    s[at + 3] += bigc + (y >> 30);
    s[at + 2] = y & 0x3FFFFFFF;
    s[at + 4] += 2 * o;
}

static int32_t section(int32_t t, int g, int32_t ca, int32_t cb, int32_t *pa, int32_t *pb,
                       int last, int32_t *out) {
    /* y = (t >> g) - (ca * y[n-1] + cb * y[n-2]) >> 10; returns the next numerator */
    int32_t s = ca * *pa + cb * *pb;
    if (last) {
        s += (s >> 31) & 1023;
    }
    int32_t y = (t >> g) - (s >> 10);
    int32_t next = y - *pb;
    *pb = y;
    *out = y;
    return next;
}

static void bank(const int16_t *x, int n) {
    int bias = C_BIAS;
    for (int i = 0; i < n; i++) {
        scr[i + 1] = ((int32_t)x[i] << 2) + bias;
    }
    for (int lev = 0; lev < b[C_K_NLEV]; lev++) {
        int32_t *s = b + C_K_HEAD + C_LW * lev, c[8], p[8];
        for (int j = 0; j < 8; j++) {
            c[j] = s[C_B_C + j] - bias;
            p[j] = s[C_B_Y + j] - bias;
        }
        int g2 = s[C_B_SH], g3 = s[C_B_SH + 1], g4 = s[C_B_SH + 2], four = s[C_B_FOUR];
        int32_t h0 = s[C_B_HB] - bias, h1 = s[C_B_HB + 1] - bias;
        int32_t xa = s[C_B_X] - bias, xb = s[C_B_X + 1] - bias;
        int32_t q0x = s[C_B_Q] - bias, q0y = s[C_B_Q + 1] - bias, q1x = s[C_B_Q + 2] - bias,
                q1y = s[C_B_Q + 3] - bias;
        int32_t acc = 0, carry = 0, big = 0, bigc = 0, y, ya, t;
        int o = 0, i = 1;
        if (s[C_B_HAS]) {
            scr[0] = s[C_B_HELD];
            i = 0;
        }
        for (; i < n; i += 2) {
            for (int half = 0; half < 2; half++) {
                int32_t xn = scr[i + half] - bias;
                int na = half ? 1 : 0, nb = half ? 0 : 1; /* a, b slots: older first sample */
                if (half) {
                    t = xn - xa;
                    xa = xn;
                } else {
                    t = xn - xb;
                    xb = xn;
                }
                t = section(t, 0, c[0], c[1], &p[na], &p[nb], 0, &y);
                t = section(t, g2, c[2], c[3], &p[2 + na], &p[2 + nb], 0, &y);
                t = section(t, g3, c[4], c[5], &p[4 + na], &p[4 + nb], !four, &y);
                if (four) {
                    section(t, g4, c[6], c[7], &p[6 + na], &p[6 + nb], 1, &y);
                }
                if (!half) {
                    ya = y;
                }
            }
            if (((ya + 16384) | (y + 16384)) >> 15) {
                t = (ya + 128) >> 8;
                big += t * t;
                t = (y + 128) >> 8;
                big += t * t;
                if (big >> 30) {
                    big &= 0x3FFFFFFF;
                    bigc++;
                }
            } else {
                acc += ya * ya + y * y;
                if (acc >> 30) {
                    acc &= 0x3FFFFFFF;
                    carry++;
                }
            }
            y = ((h1 * (xb - q1y)) >> 12) + q1x;
            q1x = xb;
            q1y = y;
            t = ((h0 * (xa - q0y)) >> 12) + q0x;
            q0x = xa;
            q0y = t;
            y = (y + t) >> 1;
            y = y > C_LIM ? C_LIM : y < -C_LIM ? -C_LIM : y;
            scr[1 + o++] = y + bias;
        }
        if (i == n) {
            s[C_B_HELD] = scr[n];
            s[C_B_HAS] = 1;
        } else {
            s[C_B_HAS] = 0;
        }
        s[C_B_X] = xa + bias;
        s[C_B_X + 1] = xb + bias;
        for (int j = 0; j < 8; j++) {
            s[C_B_Y + j] = p[j] + bias;
        }
        s[C_B_Q] = q0x + bias;
        s[C_B_Q + 1] = q0y + bias;
        s[C_B_Q + 2] = q1x + bias;
        s[C_B_Q + 3] = q1y + bias;
        fold(s, C_B_LO, acc, carry, big, bigc, o);
        n = o;
    }
}

static void chain(const int16_t *x, int n, int chunk) {
    rms(x, n);
    weighting(x, n);
    for (int off = 0; off < n; off += chunk) {
        bank(x + off, n - off < chunk ? n - off : chunk);
    }
}

static void print_state(const int32_t *s, int n) {
    for (int i = 0; i < n; i++) {
        printf("%s%d", i ? " " : "", (int)s[i]);
    }
    printf("\n");
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s STATE.txt FRAME.raw REPEATS\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[1], "r");
    if (!f) {
        perror(argv[1]);
        return 1;
    }
    static int32_t h32[2048];
    na = read_line(f, a, MAXW);
    nh = read_line(f, h32, 2048);
    nb = read_line(f, b, MAXW);
    for (int i = 0; i < nh; i++) {
        hist[i] = (uint16_t)h32[i];
    }
    while (nk < 128 && fscanf(f, "%31s %d", names[nk], &K[nk]) == 2) {
        nk++;
    }
    fclose(f);
#define GET(x) C##x = k(#x)
    GET(_A_C); GET(_A_Y); GET(_A_E); GET(_A_XP); GET(_A_SUB); GET(_A_CSUM); GET(_A_CPK);
    GET(_A_FILL); GET(_A_M); GET(_A_FM); GET(_A_FX); GET(_A_MAXM); GET(_A_MAXX); GET(_A_MINM);
    GET(_A_MINX); GET(_A_NSUB); GET(_A_RUN); GET(_A_LVL); GET(_A_SUBE); GET(_A_SUBK);
    GET(_A_HBASE); GET(_A_HSHIFT); GET(_A_HTICK); GET(_A_HTOTAL); GET(_A_ASUM); GET(_A_HBINS); GET(_K_NLEV); GET(_K_HEAD); GET(_LW); GET(_B_C); GET(_B_SH);
    GET(_B_FOUR); GET(_B_HB); GET(_B_X); GET(_B_Y); GET(_B_Q); GET(_B_HELD); GET(_B_HAS);
    GET(_B_LO); GET(_LIM);
    C_BIAS = k("_A_BIAS");
    C_P1 = k("_H_P1");
    C_P2 = k("_H_P2");
    C_P3 = k("_H_P3");
    C_P4 = k("_H_P4");
    int chunk = k("_CHUNK");

    static int16_t frame[1 << 16];
    f = fopen(argv[2], "rb");
    if (!f) {
        perror(argv[2]);
        return 1;
    }
    int n = (int)fread(frame, sizeof frame[0], sizeof frame / sizeof frame[0], f);
    fclose(f);
    long repeats = atol(argv[3]);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long r = 0; r < repeats; r++) {
        chain(frame, n, chunk);
        __asm__ volatile("" : : "r"(frame) : "memory");
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ns = ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / repeats / n;
    printf("%.4f\n", ns);
    print_state(a, na);
    for (int i = 0; i < nh; i++) {
        h32[i] = hist[i];
    }
    print_state(h32, nh);
    print_state(b, nb);
    printf("%lld %d\n", (long long)sum_sq, (int)peak_sq);
    return 0;
}
