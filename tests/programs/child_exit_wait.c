/*
 * child_exit_wait.c - a parent that learns of its children's exits the modern way: it polls
 * a pidfd of each child and, once the pidfd is readable, collects the exit at once with
 * waitid(P_PIDFD, ..., WNOHANG). The kernel makes a pidfd readable when the child has
 * exited, so the exit must be there to collect (asyncio's pidfd child watcher, systemd and
 * others rely on it). A tracer that holds the child's exit back breaks this.
 *
 * Usage:  child_exit_wait <children>
 * Output: "pid <pid>"
 *         "tick <i> late=<n>"   i = 1..children; n: exits not there once the pidfd said so
 *         "done late=<n>"
 * Exit code 0 when every exit was there with the right status, else 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

static int pidfd_open(pid_t pid)
{
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

int main(int argc, char **argv)
{
    int children = argc > 1 ? atoi(argv[1]) : 50;
    int late = 0;
    printf("pid %d\n", getpid());
    fflush(stdout);
    for (int i = 1; i <= children; i++) {
        pid_t child = fork();
        if (child < 0) {
            printf("FAIL fork: %s\n", strerror(errno));
            return 1;
        }
        if (child == 0) {
            sleep_ms(5);
            _exit(i % 200);
        }
        int fd = pidfd_open(child);
        if (fd < 0) {
            printf("FAIL pidfd_open: %s\n", strerror(errno));
            return 1;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 10000) != 1) {
            printf("FAIL child %d: pidfd not readable within 10 s\n", i);
            return 1;
        }
        siginfo_t info;
        memset(&info, 0, sizeof info);
        if (waitid(P_PIDFD, fd, &info, WEXITED | WNOHANG) != 0) {
            printf("FAIL waitid: %s\n", strerror(errno));
            return 1;
        }
        if (info.si_pid == 0) {
            /* Not there yet: count it, then collect it blocking. */
            late++;
            if (waitid(P_PIDFD, fd, &info, WEXITED) != 0) {
                printf("FAIL blocking waitid: %s\n", strerror(errno));
                return 1;
            }
        }
        if (info.si_pid != child || info.si_code != CLD_EXITED || info.si_status != i % 200) {
            printf("FAIL child %d: pid %d code %d status %d\n", i, info.si_pid, info.si_code,
                   info.si_status);
            return 1;
        }
        close(fd);
        printf("tick %d late=%d\n", i, late);
        fflush(stdout);
        sleep_ms(20);
    }
    printf("done late=%d\n", late);
    return late == 0 ? 0 : 1;
}
