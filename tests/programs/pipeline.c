/*
 * pipeline.c - exercises: a pipe shared by two sibling children that holds unread data for
 * the whole run, with a writer blocked on a full pipe. The root creates the pipe, shrinks it
 * to 4096 bytes (F_SETPIPE_SZ, 64 records; failure ignored), forks a producer and a consumer,
 * closes both of its ends and waits for the producer, then the consumer.
 * The producer writes 64-byte records (record k: k, six words derived from k, a checksum) in
 * bursts of BURST records every tick; it outpaces the consumer, so after a few ticks the pipe
 * is full and it sits blocked in write() until the last ~16 ticks of the run.
 * The consumer reads PER_TICK records every tick (30 ms), checks sequence and checksum and
 * prints one line per tick; it is the only process that prints between the pid line and the
 * root's final line, so the output does not depend on scheduling.
 * A restore that loses or duplicates buffered pipe data shows as a FAIL from the consumer.
 *
 * Usage:  pipeline <ticks>          (ticks * PER_TICK records in all)
 * Output: "pid <pid>"
 *         "tick <i> rec=<k of the last record read> sum=<running checksum, hex>"  i = 1..ticks
 *         "done records=<n>"                 (consumer, at EOF)
 *         "producer=<status> consumer=<status>"   (root; status = exit code or "sig<N>")
 * Gap, duplicate, corrupt record or short stream: "FAIL ..." and exit 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TICK_MS 30
#define BURST 20
#define PER_TICK 4
#define PIPE_BYTES 4096

struct record {
    uint64_t k;
    uint64_t data[6];
    uint64_t sum;
};
_Static_assert(sizeof(struct record) == 64, "record must be 64 bytes");

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static uint64_t mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t record_sum(const struct record *r)
{
    uint64_t s = mix(r->k);
    for (int j = 0; j < 6; j++)
        s = mix(s ^ r->data[j]);
    return s;
}

static void make_record(struct record *r, uint64_t k)
{
    r->k = k;
    for (int j = 0; j < 6; j++)
        r->data[j] = mix(k * 8 + (uint64_t)j);
    r->sum = record_sum(r);
}

static void producer(int wfd, long total)
{
    struct record burst[BURST];
    long k = 0;
    while (k < total) {
        int n = 0;
        while (n < BURST && k < total)
            make_record(&burst[n++], (uint64_t)k++);
        const char *p = (const char *)burst;
        size_t left = (size_t)n * sizeof(struct record);
        while (left > 0) {
            ssize_t w = write(wfd, p, left);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                _exit(2);
            }
            p += w;
            left -= (size_t)w;
        }
        sleep_ms(TICK_MS);
    }
    _exit(0);
}

/* Reads exactly one record; returns 1, 0 at a clean EOF, -1 on error or a partial record. */
static int read_record(int fd, struct record *r)
{
    char *p = (char *)r;
    size_t got = 0;
    while (got < sizeof *r) {
        ssize_t n = read(fd, p + got, sizeof *r - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            return got == 0 ? 0 : -1;
        got += (size_t)n;
    }
    return 1;
}

static void consumer(int rfd, long ticks)
{
    long total = ticks * PER_TICK;
    uint64_t run = 0;
    long k = 0;
    for (long i = 1;; i++) {
        struct record r;
        for (int j = 0; j < PER_TICK; j++) {
            int rc = read_record(rfd, &r);
            if (rc < 0) {
                printf("FAIL read error or partial record after rec=%ld\n", k - 1);
                _exit(1);
            }
            if (rc == 0) {
                if (k != total) {
                    printf("FAIL early EOF after %ld records, expected %ld\n", k, total);
                    _exit(1);
                }
                printf("done records=%ld\n", k);
                _exit(0);
            }
            if (r.k != (uint64_t)k) {
                printf("FAIL expected rec=%ld got rec=%llu\n", k, (unsigned long long)r.k);
                _exit(1);
            }
            if (record_sum(&r) != r.sum) {
                printf("FAIL corrupt record rec=%ld\n", k);
                _exit(1);
            }
            for (int d = 0; d < 6; d++) {
                if (r.data[d] != mix((uint64_t)k * 8 + (uint64_t)d)) {
                    printf("FAIL corrupt data in rec=%ld\n", k);
                    _exit(1);
                }
            }
            run = run * 31 + r.sum;
            k++;
        }
        printf("tick %ld rec=%ld sum=%016llx\n", i, k - 1, (unsigned long long)run);
        sleep_ms(TICK_MS);
    }
}

static void status_str(int st, char *buf, size_t n)
{
    if (WIFEXITED(st))
        snprintf(buf, n, "%d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        snprintf(buf, n, "sig%d", WTERMSIG(st));
    else
        snprintf(buf, n, "?%d", st);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2) {
        fprintf(stderr, "usage: pipeline <ticks>\n");
        return 2;
    }
    long ticks = strtol(argv[1], NULL, 10);
    printf("pid %d\n", getpid());

    int fds[2];
    if (pipe(fds) != 0) {
        perror("pipe");
        return 1;
    }
    (void)fcntl(fds[1], F_SETPIPE_SZ, PIPE_BYTES);

    fflush(stdout);
    pid_t prod = fork();
    if (prod < 0) {
        perror("fork");
        return 1;
    }
    if (prod == 0) {
        close(fds[0]);
        producer(fds[1], ticks * PER_TICK);
    }
    pid_t cons = fork();
    if (cons < 0) {
        perror("fork");
        return 1;
    }
    if (cons == 0) {
        close(fds[1]);
        consumer(fds[0], ticks);
    }
    close(fds[0]);
    close(fds[1]);

    int sp, sc;
    pid_t wp, wc;
    while ((wp = waitpid(prod, &sp, 0)) < 0 && errno == EINTR)
        ;
    while ((wc = waitpid(cons, &sc, 0)) < 0 && errno == EINTR)
        ;
    if (wp != prod || wc != cons) {
        printf("FAIL waitpid returned the wrong pids\n");
        return 1;
    }
    char a[16], b[16];
    status_str(sp, a, sizeof a);
    status_str(sc, b, sizeof b);
    printf("producer=%s consumer=%s\n", a, b);
    return (WIFEXITED(sp) && WEXITSTATUS(sp) == 0 && WIFEXITED(sc) && WEXITSTATUS(sc) == 0) ? 0 : 1;
}
