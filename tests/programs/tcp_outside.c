/*
 * tcp_outside.c - a job holding a TCP connection to a server outside the job (on the
 * loopback, port given). Each tick it writes one line to it and reports whether the write
 * went through. mlckpt's policy: the checkpoint succeeds with a warning naming the fd, and
 * after a restore the connection is reset, as after a network failure: the first write
 * fails with ECONNRESET (reported once, as "error ECONNRESET"), later ones with EPIPE.
 *
 * Usage:  tcp_outside <port> <ticks>
 * Output: "pid <pid>", then "tick <i> write=<ok|failed>" every 30 ms, "done".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 3) {
        fprintf(stderr, "usage: tcp_outside <port> <ticks>\n");
        return 2;
    }
    long ticks = strtol(argv[2], NULL, 10);
    signal(SIGPIPE, SIG_IGN);
    printf("pid %d\n", getpid());
    struct sockaddr_in at = {.sin_family = AF_INET,
                             .sin_port = htons((unsigned short)atoi(argv[1])),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&at, sizeof at)) {
        printf("FAIL connect: %s\n", strerror(errno));
        return 1;
    }
    int failed_before = 0;
    for (long i = 1; i <= ticks; i++) {
        struct timespec ts = {0, 30 * 1000000L};
        nanosleep(&ts, NULL);
        ssize_t w = write(fd, "tick\n", 5);
        if (w < 0 && !failed_before) {
            printf("error %s\n", errno == ECONNRESET ? "ECONNRESET" : strerror(errno));
            failed_before = 1;
        }
        printf("tick %ld write=%s\n", i, w == 5 ? "ok" : "failed");
    }
    printf("done\n");
    return 0;
}
