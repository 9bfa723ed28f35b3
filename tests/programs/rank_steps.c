/*
 * rank_steps.c - one rank of a job whose ranks are checkpointed together: every step rewrites
 * every page of a buffer (as a simulation rewrites its arrays) and folds the buffer's checksum
 * into a running sum kept in a register/stack variable. The buffer is seeded by the rank, so
 * ranks print different lines. Steps are paced to the wall clock from a start time shared by
 * the ranks of a job, so the ranks step together: an image taken at one moment on every rank
 * holds about the same step on each.
 *
 * Usage:  rank_steps <rank> <MiB> <steps> <period ms> [start: CLOCK_REALTIME in ms]
 *         step k ends no earlier than start + k * period (start: default now; period 0: no
 *         pacing). A step that is late (after a freeze, a restore) does not sleep.
 * Output: "pid <pid>"
 *         "step <k> rank=<r> sum=<hex>"   k = 1..steps; running checksum of the buffer
 *         "done rank=<r> sum=<hex>"
 * Deterministic apart from the pid: period and start change only when lines appear.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Sleeps until CLOCK_REALTIME reaches `ms` (an absolute deadline survives interruptions). */
static void sleep_until_ms(long long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 5 || argc > 6) {
        fprintf(stderr, "usage: rank_steps <rank> <MiB> <steps> <period ms> [start ms]\n");
        return 2;
    }
    long rank = strtol(argv[1], NULL, 10);
    size_t words = strtoull(argv[2], NULL, 10) * 1024 * 1024 / sizeof(uint64_t);
    long steps = strtol(argv[3], NULL, 10);
    long period = strtol(argv[4], NULL, 10);
    long long start = argc == 6 ? strtoll(argv[5], NULL, 10) : now_ms();

    printf("pid %d\n", getpid());
    uint64_t *buf = malloc(words * sizeof(uint64_t));
    if (buf == NULL || words == 0) {
        fprintf(stderr, "rank_steps: cannot allocate %s MiB\n", argv[2]);
        return 1;
    }
    uint64_t x = 0x9E3779B97F4A7C15ULL ^ ((uint64_t)rank * 0xD1B54A32D192ED03ULL);
    for (size_t i = 0; i < words; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[i] = x;
    }

    uint64_t sum = (uint64_t)rank;
    for (long k = 1; k <= steps; k++) {
        uint64_t h = 0xcbf29ce484222325ULL;
        for (size_t i = 0; i < words; i++) {
            buf[i] = buf[i] * 6364136223846793005ULL + (uint64_t)k + (i & 0xff);
            h = (h ^ buf[i]) * 0x100000001b3ULL;
        }
        sum = sum * 31 + h;
        printf("step %ld rank=%ld sum=%016llx\n", k, rank, (unsigned long long)sum);
        if (period > 0)
            sleep_until_ms(start + k * period);
    }
    printf("done rank=%ld sum=%016llx\n", rank, (unsigned long long)sum);
    free(buf);
    return 0;
}
