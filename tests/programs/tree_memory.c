/*
 * tree_memory.c - a job of several processes with memory of their own: the root forks
 * <procs>-1 workers; every process fills <MiB> of anonymous memory from a seeded xorshift
 * PRNG (seeded by its index) and, each tick, changes <mutations> random words of it (all
 * of it with "all": the simulation pattern, every page written every step). The root
 * drives the ticks in lock step over pipes and prints every process's running checksum, so
 * a restore that loses or mixes up any page of any process changes the output.
 *
 * Usage:  tree_memory <procs> <MiB> <ticks> [mutations per tick | all, default 300]
 * Output: "pid <pid>"
 *         "tick <i> pid=<pid> sums=<hex>,<hex>,..."   one checksum per process, root first
 *         "done"
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_PROCS 16
#define TICK_MS 30

static uint64_t rng;
static uint64_t *mem;
static size_t words;
static uint64_t sum;
static long mutations;

static uint64_t xorshift(void)
{
    uint64_t x = rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng = x;
}

static void step(long tick)
{
    if (mutations < 0) {
        for (size_t w = 0; w < words; w += 8) {
            mem[w] = mem[w] * 6364136223846793005ULL + (uint64_t)tick;
            sum = sum * 31 + mem[w];
        }
        return;
    }
    for (long k = 0; k < mutations; k++) {
        size_t w = xorshift() % words;
        sum = sum * 31 + mem[w];
        mem[w] = xorshift();
        sum = sum * 31 + mem[w];
    }
}

static void setup(int index, long mib)
{
    rng = 0x9E3779B97F4A7C15ULL ^ ((uint64_t)(index + 1) * 0xD1B54A32D192ED03ULL);
    words = (size_t)mib << 17;
    mem = malloc(words * sizeof *mem);
    if (!mem) {
        perror("malloc");
        exit(1);
    }
    for (size_t w = 0; w < words; w++)
        mem[w] = xorshift();
}

static void full_read(int fd, void *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r <= 0)
            exit(r == 0 ? 0 : 1);
        got += (size_t)r;
    }
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 4) {
        fprintf(stderr, "usage: tree_memory <procs> <MiB> <ticks> [mutations|all]\n");
        return 2;
    }
    int procs = atoi(argv[1]);
    long mib = strtol(argv[2], NULL, 10);
    long ticks = strtol(argv[3], NULL, 10);
    mutations = argc > 4 ? (strcmp(argv[4], "all") == 0 ? -1 : strtol(argv[4], NULL, 10)) : 300;
    if (procs < 1 || procs > MAX_PROCS)
        return 2;
    printf("pid %d\n", getpid());
    int go[MAX_PROCS][2], back[MAX_PROCS][2];
    for (int i = 1; i < procs; i++) {
        if (pipe(go[i]) || pipe(back[i])) {
            perror("pipe");
            return 1;
        }
        pid_t c = fork();
        if (c == 0) {
            /* Only the root may hold the other workers' pipes: they end on its close. */
            for (int j = 1; j < i; j++) {
                close(go[j][1]);
                close(back[j][0]);
            }
            close(go[i][1]);
            close(back[i][0]);
            setup(i, mib);
            long tick;
            for (;;) {
                full_read(go[i][0], &tick, sizeof tick);
                step(tick);
                if (write(back[i][1], &sum, sizeof sum) != sizeof sum)
                    _exit(1);
            }
        }
        close(go[i][0]);
        close(back[i][1]);
    }
    setup(0, mib);
    for (long t = 1; t <= ticks; t++) {
        struct timespec ts = {0, TICK_MS * 1000000L};
        nanosleep(&ts, NULL);
        for (int i = 1; i < procs; i++)
            if (write(go[i][1], &t, sizeof t) != sizeof t)
                return 1;
        step(t);
        printf("tick %ld pid=%d sums=%016llx", t, getpid(), (unsigned long long)sum);
        for (int i = 1; i < procs; i++) {
            uint64_t s;
            full_read(back[i][0], &s, sizeof s);
            printf(",%016llx", (unsigned long long)s);
        }
        printf("\n");
    }
    for (int i = 1; i < procs; i++)
        close(go[i][1]);
    while (wait(NULL) > 0)
        ;
    printf("done\n");
    return 0;
}
