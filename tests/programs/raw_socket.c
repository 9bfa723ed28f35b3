/*
 * raw_socket.c - exercises: an fd kind the checkpointer does not support (a raw IP socket,
 * which needs root). Holds it open and ticks; a checkpoint attempt must fail cleanly and
 * leave the process running with a working socket (it reads its protocol at every tick),
 * so the run still finishes with the normal output.
 *
 * Usage:  raw_socket <ticks>
 * Output: "pid <pid>"
 *         "tick <i> pid=<pid> protocol=<n>"
 */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2) {
        fprintf(stderr, "usage: raw_socket <ticks>\n");
        return 2;
    }
    long ticks = strtol(argv[1], NULL, 10);
    printf("pid %d\n", getpid());
    int fd = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
    if (fd < 0) {
        perror("socket");
        return 1;
    }
    for (long t = 0; t < ticks; t++) {
        int protocol = -1;
        socklen_t len = sizeof protocol;
        if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &len)) {
            perror("getsockopt");
            return 1;
        }
        printf("tick %ld pid=%d protocol=%d\n", t, getpid(), protocol);
        struct timespec ts = {0, 30 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return 0;
}
