/*
 * sockets.c - unix socket pairs between two processes of a job, one of each type (stream,
 * datagram, seqpacket), with data queued in them at any moment: the root produces faster
 * than its child consumes (bursts every tick; it blocks when a queue is full), the child
 * reads a fixed amount from each per tick, checks every byte and message, and prints.
 * Datagram and seqpacket messages have varying lengths, so a restore that merges or splits
 * messages, loses or repeats any, shows. The child also answers each tick over the stream
 * pair (both directions carry data).
 *
 * Usage:  sockets <ticks>
 * Output (by the child only, after the root's pid line):
 *         "tick <i> stream=<bytes read> dgram=<msgs> seq=<msgs> sum=<hex>"
 *         "done stream=<n> dgram=<n> seq=<n>", then the root: "child exited 0 acks=<n>"
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define STREAM_PER_TICK 700   /* produced; the child reads 500 */
#define MSGS_PER_TICK 3       /* produced; the child reads 2 */

static uint64_t sum = 1469598103934665603ULL;

static void mix(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        sum = (sum ^ p[i]) * 1099511628211ULL;
}

static void fail(const char *what, long a, long b)
{
    printf("FAIL %s %ld %ld\n", what, a, b);
    exit(1);
}

static size_t msg_len(long k) { return 1 + (size_t)(k * 37 % 200); }

static void fill(unsigned char *buf, size_t n, long k)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = (unsigned char)(k * 131 + i * 7);
}

static void read_full(int fd, void *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r <= 0)
            fail("stream read", (long)r, errno);
        got += (size_t)r;
    }
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    long ticks = argc > 1 ? strtol(argv[1], NULL, 10) : 60;
    printf("pid %d\n", getpid());
    int st[2], dg[2], sq[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, st) || socketpair(AF_UNIX, SOCK_DGRAM, 0, dg) ||
        socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sq))
        fail("socketpair", 0, errno);
    long total_stream = 500 * ticks, total_msgs = 2 * ticks;
    pid_t child = fork();
    if (child == 0) {
        close(st[0]);
        close(dg[0]);
        close(sq[0]);
        long off = 0, dk = 0, sk = 0;
        unsigned char buf[512], want[512];
        for (long i = 1; i <= ticks; i++) {
            struct timespec ts = {0, 30 * 1000000L};
            nanosleep(&ts, NULL);
            unsigned char chunk[500];
            read_full(st[1], chunk, sizeof chunk);
            for (size_t j = 0; j < sizeof chunk; j++)
                if (chunk[j] != (unsigned char)((off + (long)j) * 13 % 251))
                    fail("stream byte", off + (long)j, chunk[j]);
            mix(chunk, sizeof chunk);
            off += sizeof chunk;
            for (int m = 0; m < 2; m++) {
                ssize_t n = recv(dg[1], buf, sizeof buf, 0);
                fill(want, msg_len(dk), dk);
                if (n != (ssize_t)msg_len(dk) || memcmp(buf, want, (size_t)n))
                    fail("dgram", dk, (long)n);
                mix(buf, (size_t)n);
                dk++;
                n = recv(sq[1], buf, sizeof buf, 0);
                fill(want, msg_len(sk + 1000), sk + 1000);
                if (n != (ssize_t)msg_len(sk + 1000) || memcmp(buf, want, (size_t)n))
                    fail("seqpacket", sk, (long)n);
                mix(buf, (size_t)n);
                sk++;
            }
            printf("tick %ld stream=%ld dgram=%ld seq=%ld sum=%016llx\n", i, off, dk, sk,
                   (unsigned long long)sum);
            if (write(st[1], &i, sizeof i) != sizeof i)
                fail("ack", i, errno);
        }
        printf("done stream=%ld dgram=%ld seq=%ld\n", off, dk, sk);
        fflush(stdout);
        _exit(0);
    }
    close(st[1]);
    close(dg[1]);
    close(sq[1]);
    long off = 0, dk = 0, sk = 0, acks = 0;
    unsigned char buf[1024];
    /* Produce in bursts until everything the child will read is queued (blocking when a
     * queue is full), then collect the acks. */
    while (off < total_stream || dk < total_msgs || sk < total_msgs) {
        long n = STREAM_PER_TICK;
        if (off + n > total_stream)
            n = total_stream - off;
        for (long j = 0; j < n; j++)
            buf[j] = (unsigned char)((off + j) * 13 % 251);
        if (n > 0 && write(st[0], buf, (size_t)n) != n)
            fail("stream write", off, errno);
        off += n;
        for (int m = 0; m < MSGS_PER_TICK; m++) {
            if (dk < total_msgs) {
                fill(buf, msg_len(dk), dk);
                if (send(dg[0], buf, msg_len(dk), 0) < 0)
                    fail("dgram send", dk, errno);
                dk++;
            }
            if (sk < total_msgs) {
                fill(buf, msg_len(sk + 1000), sk + 1000);
                if (send(sq[0], buf, msg_len(sk + 1000), 0) < 0)
                    fail("seq send", sk, errno);
                sk++;
            }
        }
        struct timespec ts = {0, 30 * 1000000L};
        nanosleep(&ts, NULL);
    }
    long tick;
    while (read(st[0], &tick, sizeof tick) == sizeof tick)
        acks++;
    int status;
    waitpid(child, &status, 0);
    printf("child exited %d acks=%ld\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1, acks);
    return 0;
}
