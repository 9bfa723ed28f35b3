/*
 * tcp_pair.c - a TCP client/server pair inside one job, over the loopback: the root
 * listens on 127.0.0.1 (port chosen by the kernel, the listener stays open) and forks the
 * client, which connects. The root produces a byte stream faster than the client consumes
 * it (3000 bytes per tick, the client reads 2000), so data waits in the client's receive
 * queue and, once its window is full, in the root's send queue; the client answers every
 * tick with a 600-byte report the root reads only at the end, so data waits the other way
 * too. The client checks every byte and prints one line per tick.
 *
 * Usage:  tcp_pair <ticks>
 * Output (by the client only, after the root's pid line):
 *         "tick <i> bytes=<read so far> sum=<hex>"
 *         then the root: "client exited 0 reports=<n> sum=<hex>"
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PRODUCED 3000
#define CONSUMED 2000
#define REPORT 600

static uint64_t hash(uint64_t h, const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

static void fail(const char *what, long a, long b)
{
    printf("FAIL %s %ld %ld\n", what, a, b);
    exit(1);
}

static unsigned char stream_byte(long at) { return (unsigned char)(at * 17 % 253); }

static void io_full(int fd, void *buf, size_t n, int writing)
{
    size_t done = 0;
    while (done < n) {
        ssize_t r = writing ? write(fd, (char *)buf + done, n - done)
                            : read(fd, (char *)buf + done, n - done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            fail(writing ? "write" : "read", (long)r, errno);
        done += (size_t)r;
    }
}

static void sleep_tick(void)
{
    struct timespec ts = {0, 30 * 1000000L};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    long ticks = argc > 1 ? strtol(argv[1], NULL, 10) : 60;
    printf("pid %d\n", getpid());
    struct sockaddr_in at = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof at;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&at, sizeof at) || listen(l, 1) ||
        getsockname(l, (struct sockaddr *)&at, &len))
        fail("listen", 0, errno);
    pid_t child = fork();
    if (child == 0) {
        close(l);
        int c = socket(AF_INET, SOCK_STREAM, 0);
        if (c < 0 || connect(c, (struct sockaddr *)&at, sizeof at))
            fail("connect", 0, errno);
        long off = 0;
        uint64_t sum = 1469598103934665603ULL;
        unsigned char chunk[CONSUMED], report[REPORT];
        for (long i = 1; i <= ticks; i++) {
            sleep_tick();
            io_full(c, chunk, sizeof chunk, 0);
            for (size_t j = 0; j < sizeof chunk; j++)
                if (chunk[j] != stream_byte(off + (long)j))
                    fail("stream byte", off + (long)j, chunk[j]);
            sum = hash(sum, chunk, sizeof chunk);
            off += sizeof chunk;
            printf("tick %ld bytes=%ld sum=%016llx\n", i, off, (unsigned long long)sum);
            for (size_t j = 0; j < sizeof report; j++)
                report[j] = (unsigned char)(i * 3 + (long)j);
            io_full(c, report, sizeof report, 1);
        }
        fflush(stdout);
        _exit(0);
    }
    int s = accept(l, NULL, NULL);
    if (s < 0)
        fail("accept", 0, errno);
    long total = CONSUMED * ticks, off = 0;
    unsigned char buf[PRODUCED];
    while (off < total) {
        long n = total - off < PRODUCED ? total - off : PRODUCED;
        for (long j = 0; j < n; j++)
            buf[j] = stream_byte(off + j);
        io_full(s, buf, (size_t)n, 1);
        off += n;
        sleep_tick();
    }
    uint64_t sum = 1469598103934665603ULL;
    unsigned char report[REPORT];
    long reports = 0;
    for (; reports < ticks; reports++) {
        io_full(s, report, sizeof report, 0);
        for (size_t j = 0; j < sizeof report; j++)
            if (report[j] != (unsigned char)((reports + 1) * 3 + (long)j))
                fail("report byte", reports, (long)j);
        sum = hash(sum, report, sizeof report);
    }
    int status;
    waitpid(child, &status, 0);
    printf("client exited %d reports=%ld sum=%016llx\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1,
           reports, (unsigned long long)sum);
    return 0;
}
