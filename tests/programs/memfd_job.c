/*
 * memfd_job.c - exercises: a memfd (also mapped MAP_SHARED) and a deleted temporary file
 * used as the program's only state across ticks (so across a checkpoint).
 *
 * The memfd "memfd-job" holds a 64-bit value `a` at offset 0 and a 64 KiB block the value
 * is spread over; the program reads `a` through the mapping and writes the next one with
 * pwrite, so the two must stay one object. The temporary file (unlinked at once) is an
 * append-only log of 64-bit values `b`: each tick reads the previous one with pread at the
 * file offset minus 8, then write()s the next, so the file offset is state too.
 * Every tick prints what it read (from both, and a checksum of the memfd block through
 * the fd), then writes the next values. Nothing is kept in the program's own memory.
 *
 * Usage:  memfd_job <ticks>
 * Output: "pid <pid>"
 *         "tick <i> pid=<pid> a=<hex> b=<hex> log=<bytes> block=<hex>"
 *         "done ticks=<n>"
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define TICK_MS 50
#define BLOCK (64 * 1024)
#define SIZE (4096 + BLOCK)

static void die(const char *what)
{
    printf("ERROR %s: %s\n", what, strerror(errno));
    exit(1);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* FNV-1a of the block, read through the fd (not the mapping). */
static uint64_t block_sum(int fd)
{
    static uint8_t buf[BLOCK];
    if (pread(fd, buf, BLOCK, 4096) != BLOCK)
        die("pread block");
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < BLOCK; i++)
        h = (h ^ buf[i]) * 1099511628211ULL;
    return h;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2) {
        fprintf(stderr, "usage: memfd_job <ticks>\n");
        return 2;
    }
    long ticks = strtol(argv[1], NULL, 10);
    printf("pid %d\n", (int)getpid());

    int mfd = memfd_create("memfd-job", MFD_CLOEXEC);
    if (mfd < 0 || ftruncate(mfd, SIZE))
        die("memfd");
    volatile uint64_t *map = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    if (map == MAP_FAILED)
        die("mmap");
    char path[64];
    snprintf(path, sizeof path, "/tmp/mlckpt-memfd-job-%d", (int)getpid());
    int log = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (log < 0 || unlink(path))
        die("temporary file");
    uint64_t first_a = 0x243f6a8885a308d3ULL, first_b = 0x13198a2e03707344ULL;
    if (pwrite(mfd, &first_a, 8, 0) != 8 || write(log, &first_b, 8) != 8)
        die("first values");

    for (long t = 1; t <= ticks; t++) {
        uint64_t a = map[0], b;
        off_t end = lseek(log, 0, SEEK_CUR);
        if (end < 8 || pread(log, &b, 8, end - 8) != 8)
            die("read log");
        printf("tick %ld pid=%d a=%016llx b=%016llx log=%lld block=%016llx\n", t,
               (int)getpid(), (unsigned long long)a, (unsigned long long)b, (long long)end,
               (unsigned long long)block_sum(mfd));

        uint64_t next_a = a * 6364136223846793005ULL + 1442695040888963407ULL;
        uint64_t next_b = b ^ (next_a >> 7) ^ (b << 13);
        uint64_t slot = (next_a >> 20) % (BLOCK / 8);
        if (pwrite(mfd, &next_a, 8, 0) != 8 ||
            pwrite(mfd, &next_b, 8, (off_t)(4096 + slot * 8)) != 8 ||
            write(log, &next_b, 8) != 8)
            die("write state");
        sleep_ms(TICK_MS);
    }
    printf("done ticks=%ld\n", ticks);
    return 0;
}
