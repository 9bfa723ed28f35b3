/*
 * shmem.c - exercises: memory shared between a parent and its child: a 64 KiB
 * MAP_SHARED|MAP_ANONYMOUS region and a 4 KiB POSIX shm object (shm_open
 * "/mlckpt-shmem-<pid>", ftruncate, MAP_SHARED, fd closed after mmap; unlinked at the end).
 * Lock-step over two pipes, so nothing depends on timing: every tick the root writes the
 * tick number into both regions and sends a "go" byte; the child checks it sees the root's
 * writes, bumps a counter in each region, fills one 4 KiB page of the anonymous region with
 * a pattern for this tick and answers with a byte; the root then checks the counters and
 * every pattern page. Memory that is no longer shared after a restore (or lost its
 * contents) shows as a stale counter or pattern: "FAIL ..." and exit 1.
 *
 * Usage:  shmem <ticks>
 * Output: "pid <pid>"
 *         "tick <i> anon=<counter> posix=<counter> pattern_ok=1"   i = 1..ticks
 *         "done child=<exit status>"
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TICK_MS 30
#define ANON_SIZE (64 * 1024)
#define POSIX_SIZE 4096
#define PAGE 4096
#define PAGES (ANON_SIZE / PAGE) /* page 0 holds the header, 1..PAGES-1 the patterns */

struct header {
    volatile uint64_t root_tick; /* written by the root before "go" */
    volatile uint64_t counter;   /* bumped by the child every tick */
    volatile uint64_t magic;
};

#define MAGIC_ANON 0x616e6f6e2d73686dULL
#define MAGIC_POSIX 0x706f7369782d7368ULL

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static int read_byte(int fd, char *c)
{
    ssize_t n;
    while ((n = read(fd, c, 1)) < 0 && errno == EINTR)
        ;
    return (int)n;
}

static int write_byte(int fd, char c)
{
    ssize_t n;
    while ((n = write(fd, &c, 1)) < 0 && errno == EINTR)
        ;
    return (int)n;
}

static unsigned char pattern(uint64_t tick, size_t off)
{
    return (unsigned char)(tick * 37 + off * 7 + (off >> 8));
}

static void fill_page(unsigned char *anon, uint64_t tick)
{
    unsigned char *p = anon + (1 + (tick - 1) % (PAGES - 1)) * PAGE;
    for (size_t off = 0; off < PAGE; off++)
        p[off] = pattern(tick, off);
}

static void child(unsigned char *anon, struct header *ha, struct header *hp, int go_r, int ack_w)
{
    uint64_t seen = 0;
    char c;
    while (read_byte(go_r, &c) == 1) {
        seen++;
        char answer = 'k';
        if (ha->root_tick != seen || hp->root_tick != seen || ha->magic != MAGIC_ANON ||
            hp->magic != MAGIC_POSIX) {
            answer = 'F';
        } else {
            ha->counter++;
            hp->counter++;
            fill_page(anon, seen);
        }
        if (write_byte(ack_w, answer) != 1)
            _exit(3);
    }
    _exit(0);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2) {
        fprintf(stderr, "usage: shmem <ticks>\n");
        return 2;
    }
    long ticks = strtol(argv[1], NULL, 10);
    printf("pid %d\n", getpid());

    unsigned char *anon =
        mmap(NULL, ANON_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (anon == MAP_FAILED) {
        perror("mmap anon");
        return 1;
    }
    char name[64];
    snprintf(name, sizeof name, "/mlckpt-shmem-%d", getpid());
    int sfd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (sfd < 0) {
        perror(name);
        return 1;
    }
    if (ftruncate(sfd, POSIX_SIZE) != 0) {
        perror("ftruncate");
        shm_unlink(name);
        return 1;
    }
    unsigned char *posix = mmap(NULL, POSIX_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, sfd, 0);
    if (posix == MAP_FAILED) {
        perror("mmap shm");
        shm_unlink(name);
        return 1;
    }
    close(sfd);
    struct header *ha = (struct header *)anon, *hp = (struct header *)posix;
    ha->magic = MAGIC_ANON;
    hp->magic = MAGIC_POSIX;

    int go[2], ack[2];
    if (pipe(go) != 0 || pipe(ack) != 0) {
        perror("pipe");
        shm_unlink(name);
        return 1;
    }
    fflush(stdout);
    pid_t kid = fork();
    if (kid < 0) {
        perror("fork");
        shm_unlink(name);
        return 1;
    }
    if (kid == 0) {
        close(go[1]);
        close(ack[0]);
        child(anon, ha, hp, go[0], ack[1]);
    }
    close(go[0]);
    close(ack[1]);

    int rc = 0;
    for (long i = 1; i <= ticks; i++) {
        ha->root_tick = (uint64_t)i;
        hp->root_tick = (uint64_t)i;
        char c = 0;
        if (write_byte(go[1], 'g') != 1 || read_byte(ack[0], &c) != 1) {
            printf("FAIL tick %ld: lost the child\n", i);
            rc = 1;
            break;
        }
        if (c != 'k') {
            printf("FAIL tick %ld: the child did not see the root's writes\n", i);
            rc = 1;
            break;
        }
        /* Every pattern page written so far must hold the last tick that wrote it. */
        int pattern_ok = 1;
        for (long p = 1; p < PAGES && p <= i; p++) {
            long last = i - ((i - p) % (PAGES - 1)); /* last tick t <= i with (t-1)%15 == p-1 */
            const unsigned char *q = anon + p * PAGE;
            for (size_t off = 0; off < PAGE; off++)
                if (q[off] != pattern((uint64_t)last, off)) {
                    pattern_ok = 0;
                    break;
                }
        }
        printf("tick %ld anon=%llu posix=%llu pattern_ok=%d\n", i,
               (unsigned long long)ha->counter, (unsigned long long)hp->counter, pattern_ok);
        if (ha->counter != (uint64_t)i || hp->counter != (uint64_t)i || !pattern_ok) {
            printf("FAIL tick %ld: stale shared memory\n", i);
            rc = 1;
            break;
        }
        sleep_ms(TICK_MS);
    }

    close(go[1]);
    int st = 0;
    pid_t w;
    while ((w = waitpid(kid, &st, 0)) < 0 && errno == EINTR)
        ;
    shm_unlink(name);
    if (rc != 0)
        return rc;
    int code = w != kid ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    printf("done child=%d\n", code);
    return code == 0 ? 0 : 1;
}
