/*
 * tcp_refused.c - TCP states mlckpt refuses to checkpoint, held while ticking:
 *  "unaccepted": a connection of the job waiting in its own listener's accept queue, with
 *                data sent on it (one without is connected again at restore);
 *  "halfclosed": a connection inside the job, one end shut down for writing (FIN_WAIT2 /
 *                CLOSE_WAIT).
 * A checkpoint must fail naming the socket; the job runs on and ends normally.
 *
 * Usage:  tcp_refused <unaccepted|halfclosed> <ticks>
 * Output: "pid <pid>", then "tick <i>" every 30 ms, "done".
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

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 3) {
        fprintf(stderr, "usage: tcp_refused <unaccepted|halfclosed> <ticks>\n");
        return 2;
    }
    long ticks = strtol(argv[2], NULL, 10);
    printf("pid %d\n", getpid());
    struct sockaddr_in at = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof at;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (l < 0 || c < 0 || bind(l, (struct sockaddr *)&at, sizeof at) || listen(l, 4) ||
        getsockname(l, (struct sockaddr *)&at, &len) ||
        connect(c, (struct sockaddr *)&at, sizeof at)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        return 1;
    }
    int s = -1;
    if (!strcmp(argv[1], "unaccepted") && write(c, "y", 1) != 1) {
        printf("FAIL write: %s\n", strerror(errno));
        return 1;
    }
    if (!strcmp(argv[1], "halfclosed")) {
        s = accept(l, NULL, NULL);
        if (s < 0 || shutdown(c, SHUT_WR)) {
            printf("FAIL half-close: %s\n", strerror(errno));
            return 1;
        }
    }
    for (long i = 1; i <= ticks; i++) {
        struct timespec ts = {0, 30 * 1000000L};
        nanosleep(&ts, NULL);
        printf("tick %ld\n", i);
    }
    if (s < 0)
        s = accept(l, NULL, NULL);
    char b;
    if (s < 0 || write(s, "x", 1) != 1 || read(c, &b, 1) != 1) {
        printf("FAIL the connection does not work: %s\n", strerror(errno));
        return 1;
    }
    printf("done\n");
    return 0;
}
