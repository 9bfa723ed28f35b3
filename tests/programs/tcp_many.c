/*
 * tcp_many.c - many established loopback TCP connections in one process, each with data
 * unread in both directions: <n> connections to its own listener, 8 KiB sent each way on
 * each and not read until the end. Ticks, then reads everything back and checks it.
 *
 * Usage:  tcp_many <n> <ticks>
 * Output: "pid <pid>", "tick <i>" per tick, then "verified <n> connections"
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define QUEUED 8192

static void fail(const char *what, long a)
{
    printf("FAIL %s %ld errno=%d\n", what, a, errno);
    exit(1);
}

static void fill(unsigned char *buf, long k)
{
    for (long i = 0; i < QUEUED; i++)
        buf[i] = (unsigned char)(k * 29 + i * 3 + (i >> 8));
}

static void check(int fd, long k)
{
    unsigned char got[QUEUED], want[QUEUED];
    size_t done = 0;
    while (done < QUEUED) {
        ssize_t r = read(fd, got + done, QUEUED - done);
        if (r <= 0)
            fail("read", k);
        done += (size_t)r;
    }
    fill(want, k);
    if (memcmp(got, want, QUEUED))
        fail("data differs", k);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 3) {
        fprintf(stderr, "usage: tcp_many <n> <ticks>\n");
        return 2;
    }
    long n = strtol(argv[1], NULL, 10), ticks = strtol(argv[2], NULL, 10);
    printf("pid %d\n", getpid());
    struct sockaddr_in at = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof at;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&at, sizeof at) || listen(l, 128) ||
        getsockname(l, (struct sockaddr *)&at, &len))
        fail("listen", 0);
    int *c = calloc((size_t)n + 1, sizeof *c), *s = calloc((size_t)n + 1, sizeof *s);
    unsigned char buf[QUEUED];
    for (long i = 0; i < n; i++) {
        c[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (c[i] < 0 || connect(c[i], (struct sockaddr *)&at, sizeof at))
            fail("connect", i);
        s[i] = accept(l, NULL, NULL);
        if (s[i] < 0)
            fail("accept", i);
        fill(buf, 2 * i);
        if (write(c[i], buf, QUEUED) != QUEUED)
            fail("write", i);
        fill(buf, 2 * i + 1);
        if (write(s[i], buf, QUEUED) != QUEUED)
            fail("write", i);
    }
    for (long t = 1; t <= ticks; t++) {
        struct timespec ts = {0, 30 * 1000000L};
        nanosleep(&ts, NULL);
        printf("tick %ld\n", t);
    }
    for (long i = 0; i < n; i++) {
        check(s[i], 2 * i);
        check(c[i], 2 * i + 1);
    }
    printf("verified %ld connections\n", n);
    return 0;
}
