/*
 * field.c - memory as a simulation has it: a 2-D field of doubles that varies smoothly
 * (products of slow waves, plus a few warm spots), stepped by explicit diffusion one band
 * of rows per tick. Unlike memory.c's random numbers, such data compresses somewhat: the
 * high bytes of neighbouring doubles repeat, the low mantissa bytes do not.
 *
 * Usage:  field <MiB> <ticks>
 * Output: "pid <pid>"
 *         "tick <i> pid=<pid> sum=<hex>"   per tick; sum is a running checksum of the band
 *                                          stepped
 *         "final <hex>"                    checksum of the whole field
 * Deterministic apart from the pid.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TICK_MS 30
#define BAND_ROWS 16

static uint64_t mix(uint64_t sum, uint64_t v)
{
    sum ^= v;
    sum *= 0x100000001b3ULL;
    return (sum << 13) | (sum >> 51);
}

static uint64_t bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

/* sin(k*step) for k = 0..n-1 + phase, by the recurrence s[k+1] = 2cos(step)s[k] - s[k-1]
 * (no libm: the test harness links programs without -lm) */
static void wave(double *out, size_t n, double step, double phase)
{
    double c = 1 - step * step / 2 + step * step * step * step / 24;
    double prev = phase - step, cur = phase; /* sin x ~ x near 0: a smooth start */
    for (size_t k = 0; k < n; k++) {
        out[k] = cur;
        double next = 2 * c * cur - prev;
        prev = cur;
        cur = next;
    }
}

static size_t isqrt(size_t n)
{
    size_t r = 0;
    while ((r + 1) * (r + 1) <= n)
        r++;
    return r;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL); /* pacing only: an early (EINTR) wake-up changes no output */
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 3) {
        fprintf(stderr, "usage: field <MiB> <ticks>\n");
        return 2;
    }
    size_t cells = strtoull(argv[1], NULL, 10) * 1024 * 1024 / sizeof(double);
    long ticks = strtol(argv[2], NULL, 10);
    size_t cols = isqrt(cells);
    size_t rows = cols ? cells / cols : 0;
    printf("pid %d\n", getpid());
    double *u = malloc(cells * sizeof(double));
    double *wave_x = malloc(cols * sizeof(double));
    double *wave_y = malloc(rows * sizeof(double));
    if (u == NULL || wave_x == NULL || wave_y == NULL || rows < 3 || cols < 3) {
        fprintf(stderr, "field: cannot allocate %s MiB\n", argv[1]);
        return 1;
    }
    wave(wave_x, cols, 0.0021, 0.0);
    wave(wave_y, rows, 0.0017, 0.3);
    for (size_t i = 0; i < rows; i++) {
        for (size_t j = 0; j < cols; j++) {
            double v = 300.0 + 20.0 * wave_x[j] * wave_y[i];
            /* warm spots: a bump every 1024 cells along each axis */
            if ((i & 1023) < 64 && (j & 1023) < 64)
                v += 5.0 * wave_x[(j * 7) % cols];
            u[i * cols + j] = v;
        }
    }

    uint64_t sum = 0;
    size_t band = 1;
    for (long t = 0; t < ticks; t++) {
        /* one explicit diffusion step over BAND_ROWS interior rows, in place */
        for (size_t r = 0; r < BAND_ROWS; r++, band++) {
            if (band >= rows - 1)
                band = 1;
            double *row = u + band * cols;
            for (size_t j = 1; j < cols - 1; j++) {
                double lap = row[j - 1] + row[j + 1] + row[j - cols] + row[j + cols] - 4 * row[j];
                row[j] += 0.1 * lap;
            }
            sum = mix(sum, bits(row[cols / 2]));
            sum = mix(sum, bits(row[(band * 31) % cols]));
        }
        printf("tick %ld pid=%d sum=%016llx\n", t, getpid(), (unsigned long long)sum);
        sleep_ms(TICK_MS);
    }

    uint64_t total = sum;
    for (size_t k = 0; k < cells; k++)
        total = mix(total, bits(u[k]));
    printf("final %016llx\n", (unsigned long long)total);
    free(u);
    return 0;
}
