/*
 * mutator.c - exercises: every way the contents of a page change other than a plain store,
 * for write-tracked incremental checkpoints. Each tick, driven by a seeded PRNG:
 *   - stores into a 16 MiB anonymous buffer, and a sweep that rewrites one MiB of it
 *   - MADV_DONTNEED on a range of it: the pages read back as zeros afterwards
 *   - the kernel writing into it: pread() from a file the program wrote at start
 *   - a 1 MiB mapping replaced by a new one at the same address (munmap + mmap, or
 *     mmap MAP_FIXED over it) with other contents
 *   - a 2 MiB mapping moved with mremap between two addresses (one right after the 16 MiB
 *     buffer), one page changed after
 *   - mprotect making part of a mapping read-only (splitting it) across a tick
 *   - the heap grown with sbrk (the new part written) and shrunk again
 *   - pages of a fresh mapping only read (they map the zero page), written later, dropped
 * Usage:  mutator <ticks>
 * Output: "pid <pid>"
 *         "tick <i> pid=<pid> sum=<hex> buf=<hex> ... zero=<hex>"  per tick: a checksum over
 *                                 all of the memory above, then one per part (a restore that
 *                                 got a part wrong names it)
 *         "final <hex>"
 * Deterministic apart from the pid. Runs in its working directory (writes mutator.dat).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024UL * 1024)
#define PAGE 4096UL
#define TICK_MS 20
#define BUF_BYTES (16 * MIB)
#define FILE_BYTES (1 * MIB)
#define HEAP_STEP (64 * 1024)

static uint64_t rng = 0x2545F4914F6CDD1DULL;

static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static uint64_t mix(uint64_t sum, const void *mem, size_t bytes)
{
    const uint64_t *p = mem;
    for (size_t i = 0; i < bytes / 8; i++) {
        sum ^= p[i];
        sum *= 0x100000001b3ULL;
        sum = (sum << 13) | (sum >> 51);
    }
    return sum;
}

static void fill(void *mem, size_t bytes)
{
    uint64_t *p = mem;
    for (size_t i = 0; i < bytes / 8; i++)
        p[i] = next();
}

static void *map(void *at, size_t bytes, int prot, int extra)
{
    void *p = mmap(at, bytes, prot, MAP_PRIVATE | MAP_ANONYMOUS | extra, -1, 0);
    if (p == MAP_FAILED || (at && p != at)) {
        perror("mutator: mmap");
        exit(1);
    }
    return p;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL); /* pacing only */
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2) {
        fprintf(stderr, "usage: mutator <ticks>\n");
        return 2;
    }
    long ticks = strtol(argv[1], NULL, 10);
    printf("pid %d\n", getpid());

    /* buf, then 2 MiB right after it where the moving mapping below lands every other
       move: a mapping moved next to another one merges with it in the kernel. */
    char *buf = map(NULL, BUF_BYTES + 2 * MIB, PROT_READ | PROT_WRITE, 0);
    mprotect(buf + BUF_BYTES, 2 * MIB, PROT_NONE);
    fill(buf, BUF_BYTES);
    int fd = open("mutator.dat", O_RDWR | O_CREAT | O_TRUNC, 0600);
    char *chunk = map(NULL, FILE_BYTES, PROT_READ | PROT_WRITE, 0);
    fill(chunk, FILE_BYTES);
    if (fd < 0 || write(fd, chunk, FILE_BYTES) != (ssize_t)FILE_BYTES) {
        perror("mutator: mutator.dat");
        return 1;
    }
    munmap(chunk, FILE_BYTES);
    char *replaced = map(NULL, MIB, PROT_READ | PROT_WRITE, 0);
    fill(replaced, MIB);
    char *slot[2] = {map(NULL, 2 * MIB, PROT_READ | PROT_WRITE, 0), buf + BUF_BYTES};
    fill(slot[0], 2 * MIB);
    int moved = 0;
    char *split = map(NULL, MIB, PROT_READ | PROT_WRITE, 0);
    fill(split, MIB);
    char *heap0 = sbrk(0);
    char *zero = map(NULL, 4 * MIB, PROT_READ | PROT_WRITE, 0);
    volatile uint64_t sink = 0;

    uint64_t sum = 0;
    for (long t = 0; t < ticks; t++) {
        for (int k = 0; k < 200; k++)
            ((uint64_t *)buf)[next() % (BUF_BYTES / 8)] = next();
        fill(buf + (t % 16) * MIB, MIB);
        if (t % 3 == 0) {
            size_t at = (next() % (BUF_BYTES / PAGE - 32)) * PAGE;
            madvise(buf + at, 16 * PAGE, MADV_DONTNEED);
        }
        off_t from = (off_t)(next() % (FILE_BYTES / PAGE - 8)) * PAGE;
        if (pread(fd, buf + (next() % (BUF_BYTES / PAGE - 8)) * PAGE, 8 * PAGE, from) != 8 * PAGE)
            return 1;
        if (t % 4 == 1) {
            munmap(replaced, MIB);
            map(replaced, MIB, PROT_READ | PROT_WRITE, MAP_FIXED_NOREPLACE);
            fill(replaced, MIB / 2);
        } else if (t % 4 == 3) {
            map(replaced, MIB, PROT_READ | PROT_WRITE, MAP_FIXED);
            fill(replaced + MIB / 2, MIB / 2);
        }
        if (t % 4 == 2) {
            char *to = slot[!moved];
            if (mremap(slot[moved], 2 * MIB, 2 * MIB, MREMAP_MAYMOVE | MREMAP_FIXED, to) != to)
                return 1;
            slot[moved] = map(slot[moved], 2 * MIB, PROT_NONE, MAP_FIXED_NOREPLACE);
            moved = !moved;
            fill(slot[moved] + (next() % 512) * PAGE, PAGE);
        }
        if (t % 2 == 0) {
            mprotect(split + MIB / 4, MIB / 4, PROT_READ | PROT_WRITE);
            fill(split + MIB / 4 + (next() % 64) * PAGE, PAGE);
        } else {
            fill(split + (next() % 64) * PAGE, PAGE);
            mprotect(split + MIB / 4, MIB / 4, PROT_READ);
        }
        char *brk_before = sbrk(0);
        if (t % 7 == 6 && brk_before - heap0 >= 3 * HEAP_STEP) {
            sbrk(-3 * HEAP_STEP);
        } else {
            sbrk(HEAP_STEP);
            fill(brk_before, HEAP_STEP);
        }
        for (int k = 0; k < 8; k++)
            sink += ((uint64_t *)zero)[(next() % (4 * MIB / PAGE)) * PAGE / 8];
        if (t % 9 == 4)
            fill(zero + (next() % (4 * MIB / PAGE - 4)) * PAGE, 4 * PAGE);
        if (t % 11 == 10)
            madvise(zero, 4 * MIB, MADV_DONTNEED);

        uint64_t part[6] = {
            mix(0, buf, BUF_BYTES),
            mix(0, replaced, MIB),
            mix(0, slot[moved], 2 * MIB),
            mix(0, split, MIB),
            mix(0, heap0, (size_t)((char *)sbrk(0) - heap0)),
            mix(0, zero, 4 * MIB),
        };
        sum = mix(sum, part, sizeof part);
        printf("tick %ld pid=%d sum=%016llx buf=%04x replaced=%04x moved=%04x split=%04x "
               "heap=%04x zero=%04x\n",
               t, getpid(), (unsigned long long)sum, (unsigned)(part[0] & 0xffff),
               (unsigned)(part[1] & 0xffff), (unsigned)(part[2] & 0xffff),
               (unsigned)(part[3] & 0xffff), (unsigned)(part[4] & 0xffff),
               (unsigned)(part[5] & 0xffff));
        sleep_ms(TICK_MS);
    }
    printf("final %016llx\n", (unsigned long long)(sum ^ sink ^ rng));
    return 0;
}
