/* Scalar C reference for tools/bench.py: sum of squares and peak of one int16 frame.
 *
 * Usage: bench_rms FRAME.raw REPEATS -> "<ns per sample> <sum of squares> <peak>"
 * The kernel is what the viper one computes (64-bit sum, largest |sample|), timed over REPEATS
 * passes of the same frame; an empty asm statement keeps the compiler from hoisting the work.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

__attribute__((noinline)) static void rms_frame(const int16_t *x, int n, int64_t *sum,
                                                int32_t *peak) {
    int64_t s = 0;
    int32_t p = 0;
    for (int i = 0; i < n; i++) {
        int32_t v = x[i];
        s += v * v;
        int32_t a = v < 0 ? -v : v;
        if (a > p) {
            p = a;
        }
    }
    *sum = s;
    *peak = p;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s FRAME.raw REPEATS\n", argv[0]);
        return 2;
    }
    static int16_t frame[1 << 16];
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 1;
    }
    int n = (int)fread(frame, sizeof frame[0], sizeof frame / sizeof frame[0], f);
    fclose(f);
    long repeats = atol(argv[2]);
    int64_t sum = 0;
    int32_t peak = 0;
    double best = 1e30;
    for (int run = 0; run < 5; run++) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (long r = 0; r < repeats; r++) {
            rms_frame(frame, n, &sum, &peak);
            __asm__ volatile("" : : "r"(frame) : "memory");
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double ns = ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / repeats / n;
        if (ns < best) {
            best = ns;
        }
    }
    printf("%.4f %lld %d\n", best, (long long)sum, (int)peak);
    return 0;
}
