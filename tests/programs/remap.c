/*
 * remap.c - exercises: a mapping moved with mremap right next to another one. The kernel
 * merges the two, and when a userfaultfd is registered without remap events it drops the
 * registration of the merged mapping but leaves its pages write-protected: a tracker that
 * registers it again must not take those pages for unwritten.
 *
 * Usage:  remap <ticks> <move tick>
 * Output: "pid <pid>"
 *         "tick <i> pid=<pid> sum=<hex>"  per tick (40 ms): checksum of both mappings
 *         "final <hex>"
 * Deterministic apart from the pid. Most of the 8 MiB mapping is written once, at start.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024UL * 1024)
#define STAY (8 * MIB)
#define MOVER (2 * MIB)

static uint64_t sum_of(const uint64_t *p, size_t bytes, uint64_t sum)
{
    for (size_t i = 0; i < bytes / 8; i++)
        sum = (sum ^ p[i]) * 0x100000001b3ULL;
    return sum;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 3)
        return 2;
    long ticks = strtol(argv[1], NULL, 10), move_at = strtol(argv[2], NULL, 10);
    printf("pid %d\n", getpid());
    /* One mapping, filled: 8 MiB that stay, then 2 MiB that move away now and come back
       at the move tick. Back home it continues the first part exactly (same origin, offset
       and flags), so the kernel merges the two. */
    char *home = mmap(NULL, STAY + 2 * MOVER, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (home == MAP_FAILED)
        return 1;
    uint64_t *stay = (uint64_t *)home;
    uint64_t *mover = (uint64_t *)(home + STAY);
    for (size_t i = 0; i < (STAY + MOVER) / 8; i++)
        stay[i] = i * 0x9E3779B97F4A7C15ULL;
    char *away = home + STAY + MOVER; /* the mapping's last 2 MiB, never touched */
    if (mremap(mover, MOVER, MOVER, MREMAP_MAYMOVE | MREMAP_FIXED, away) != away)
        return 1;
    if (mmap(home + STAY, MOVER, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) ==
        MAP_FAILED)
        return 1;
    mover = (uint64_t *)away;
    uint64_t sum = 0;
    for (long t = 0; t < ticks; t++) {
        if (t == move_at) {
            void *to = home + STAY;
            if (mremap(mover, MOVER, MOVER, MREMAP_MAYMOVE | MREMAP_FIXED, to) != to)
                return 1;
            mover = to;
        }
        stay[(t * 4099) % (STAY / 8)] += (uint64_t)t;
        mover[t % (MOVER / 8)] ^= (uint64_t)t;
        sum = sum_of(stay, STAY, sum_of(mover, MOVER, sum));
        printf("tick %ld pid=%d sum=%016llx\n", t, getpid(), (unsigned long long)sum);
        struct timespec ts = {0, 40 * 1000000L};
        nanosleep(&ts, NULL);
    }
    printf("final %016llx\n", (unsigned long long)sum);
    return 0;
}
