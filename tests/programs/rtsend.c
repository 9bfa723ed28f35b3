/*
 * rtsend.c - sends real-time signals to another process: <count> SIGRTMIN with sigqueue,
 * one every <interval_us> microseconds, each carrying its number as the value. A send the
 * kernel refuses for a full queue (EAGAIN) is tried again; any other failure ends it.
 *
 * Usage:  rtsend <pid> <count> <interval_us>
 * Output: "sent <n>" once done (n == count unless an error was printed)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 4) {
        fprintf(stderr, "usage: rtsend <pid> <count> <interval_us>\n");
        return 2;
    }
    pid_t pid = (pid_t)atoi(argv[1]);
    long count = atol(argv[2]);
    long interval_us = atol(argv[3]);
    struct timespec pause = {interval_us / 1000000, (interval_us % 1000000) * 1000L};
    long sent = 0;
    while (sent < count) {
        union sigval value = {.sival_int = (int)sent};
        if (sigqueue(pid, SIGRTMIN, value) != 0) {
            if (errno == EAGAIN) {
                nanosleep(&pause, NULL);
                continue;
            }
            perror("sigqueue");
            break;
        }
        sent++;
        nanosleep(&pause, NULL);
    }
    printf("sent %ld\n", sent);
    return sent == count ? 0 : 1;
}
