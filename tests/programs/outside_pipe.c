/*
 * outside_pipe.c - a job holding the write end of a pipe whose reader is not part of the
 * job (a launcher's pipe). Each tick it writes one byte to that fd and reports how the write
 * went. mlckpt's policy: the checkpoint succeeds with a warning naming the fd, and after a
 * restore the pipe's other side is gone, as if it had exited: writes fail with EPIPE.
 *
 * Usage:  outside_pipe <fd> <ticks>
 * Output: "pid <pid>", then "tick <i> write=<ok|EPIPE|EBADF|errno N>" every 30 ms, "done".
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
    if (argc != 3) {
        fprintf(stderr, "usage: outside_pipe <fd> <ticks>\n");
        return 2;
    }
    int fd = atoi(argv[1]);
    long ticks = strtol(argv[2], NULL, 10);
    signal(SIGPIPE, SIG_IGN);
    printf("pid %d\n", getpid());
    for (long i = 1; i <= ticks; i++) {
        struct timespec ts = {0, 30 * 1000000L};
        nanosleep(&ts, NULL);
        const char *how = "ok";
        char other[32];
        if (write(fd, "x", 1) != 1) {
            if (errno == EPIPE)
                how = "EPIPE";
            else if (errno == EBADF)
                how = "EBADF";
            else {
                snprintf(other, sizeof other, "errno %d", errno);
                how = other;
            }
        }
        printf("tick %ld write=%s\n", i, how);
    }
    printf("done\n");
    return 0;
}
