/*
 * tcp.c - exercises: an fd kind the checkpointer does not support (a TCP socket). Listens on
 * 127.0.0.1, port chosen by the kernel, and every tick connects to itself, accepts, sends
 * "ping <i>" through the connection and reads it back. A checkpoint attempt must fail
 * cleanly and leave the process running with a working socket, so the run still finishes
 * with the normal output.
 *
 * Usage:  tcp <ticks>
 * Output: "pid <pid>"
 *         "tick <i> pid=<pid> echo=ping-<i>"
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define TICK_MS 30

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2) {
        fprintf(stderr, "usage: tcp <ticks>\n");
        return 2;
    }
    long ticks = strtol(argv[1], NULL, 10);
    printf("pid %d\n", getpid());

    struct sockaddr_in addr;
    socklen_t len = sizeof addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof addr) || listen(lfd, 4))
        die("listen");
    if (getsockname(lfd, (struct sockaddr *)&addr, &len))
        die("getsockname");

    for (long t = 0; t < ticks; t++) {
        char msg[32], got[32] = {0};
        int n = snprintf(msg, sizeof msg, "ping-%ld", t);
        int c = socket(AF_INET, SOCK_STREAM, 0);
        if (c < 0 || connect(c, (struct sockaddr *)&addr, sizeof addr))
            die("connect");
        int a = accept(lfd, NULL, NULL);
        if (a < 0)
            die("accept");
        if (write(c, msg, (size_t)n) != n || read(a, got, sizeof got - 1) != n)
            die("echo");
        close(c);
        close(a);
        printf("tick %ld pid=%d echo=%s\n", t, getpid(), got);
        sleep_ms(TICK_MS);
    }
    return 0;
}
