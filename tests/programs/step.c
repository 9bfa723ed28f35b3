/*
 * step.c - one step of the tree_job.sh job (a short-lived child of a bash parent).
 * Reads an accumulator from <statefile> (missing or empty => 0) through an fd it keeps open
 * (O_RDWR|O_CREAT), then runs SUBTICKS sub-ticks of 30 ms; each sub-tick mutates a 1 MiB
 * heap buffer (seeded from the accumulator and the step number), hashes it and folds the
 * hash into the in-memory accumulator. At the end it rewrites the state file in place
 * (ftruncate + pwrite at offset 0 on the same fd; no temp file, no rename) and exits 0.
 * A checkpoint taken while a step runs must bring back its buffer, its accumulator and its
 * open state-file fd.
 *
 * Usage:  step <statefile> <i>
 * Output: "tick step <i>.<j> acc=<16 hex digits>"   j = 1..SUBTICKS
 * State file: "<16 hex digits>\n" (the new accumulator).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TICK_MS 30
#define SUBTICKS 5
#define BUF_WORDS ((1u << 20) / sizeof(uint64_t))

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 3) {
        fprintf(stderr, "usage: step <statefile> <i>\n");
        return 2;
    }
    const char *path = argv[1];
    long step = strtol(argv[2], NULL, 10);

    int fd = open(path, O_RDWR | O_CREAT, 0644);
    if (fd < 0) {
        perror(path);
        return 1;
    }
    char text[64] = {0};
    ssize_t n = pread(fd, text, sizeof text - 1, 0);
    if (n < 0) {
        perror("pread");
        return 1;
    }
    uint64_t acc = 0;
    if (n > 0) {
        char *end;
        acc = strtoull(text, &end, 16);
        if (end == text || *end != '\n') {
            printf("FAIL step %ld: bad state file content\n", step);
            return 1;
        }
    }

    uint64_t *buf = malloc(BUF_WORDS * sizeof(uint64_t));
    if (!buf) {
        perror("malloc");
        return 1;
    }
    uint64_t x = acc ^ ((uint64_t)step * 0x9E3779B97F4A7C15ULL) ^ 0x2545F4914F6CDD1DULL;
    for (size_t k = 0; k < BUF_WORDS; k++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[k] = x;
    }

    for (int j = 1; j <= SUBTICKS; j++) {
        uint64_t h = 0xcbf29ce484222325ULL;
        for (size_t k = 0; k < BUF_WORDS; k++) {
            buf[k] = buf[k] * 6364136223846793005ULL + (uint64_t)j;
            h = (h ^ buf[k]) * 0x100000001b3ULL;
        }
        acc = acc * 31 + h;
        printf("tick step %ld.%d acc=%016llx\n", step, j, (unsigned long long)acc);
        sleep_ms(TICK_MS);
    }

    int len = snprintf(text, sizeof text, "%016llx\n", (unsigned long long)acc);
    if (ftruncate(fd, 0) != 0 || pwrite(fd, text, (size_t)len, 0) != len) {
        perror("write state");
        return 1;
    }
    close(fd);
    free(buf);
    return 0;
}
