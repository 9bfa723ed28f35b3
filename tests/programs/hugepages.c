/*
 * hugepages.c - exercises: memory backed by transparent huge pages (MADV_HUGEPAGE on a
 * 2 MiB-aligned region), written in every huge page each tick, so a checkpoint that splits
 * huge pages on write would leave none.
 *
 * Usage:  hugepages <MiB> <ticks>
 * Output: "pid <pid>"
 *         "tick <i> pid=<pid> sum=<hex>"  per tick
 *         "final <hex>"
 * Deterministic apart from the pid.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define HUGE (2UL << 20)
#define TICK_MS 30

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 3)
        return 2;
    size_t bytes = strtoull(argv[1], NULL, 10) << 20;
    long ticks = strtol(argv[2], NULL, 10);
    printf("pid %d\n", getpid());
    char *raw = mmap(NULL, bytes + HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                     -1, 0);
    if (raw == MAP_FAILED)
        return 1;
    uint64_t *mem = (uint64_t *)(((uintptr_t)raw + HUGE - 1) & ~(HUGE - 1));
    madvise(mem, bytes, MADV_HUGEPAGE);
    size_t words = bytes / 8;
    for (size_t i = 0; i < words; i++)
        mem[i] = i * 0x9E3779B97F4A7C15ULL;
    uint64_t sum = 0;
    for (long t = 0; t < ticks; t++) {
        for (size_t w = (size_t)t % 512; w < words; w += HUGE / 8) {
            mem[w] = mem[w] * 31 + (uint64_t)t;
            sum = (sum ^ mem[w]) * 0x100000001b3ULL;
        }
        printf("tick %ld pid=%d sum=%016llx\n", t, getpid(), (unsigned long long)sum);
        struct timespec ts = {0, TICK_MS * 1000000L};
        nanosleep(&ts, NULL);
    }
    for (size_t i = 0; i < words; i++)
        sum = (sum ^ mem[i]) * 0x100000001b3ULL;
    printf("final %016llx\n", (unsigned long long)sum);
    return 0;
}
