/*
 * pgrp_sibling - process groups across siblings, as a shell with job control makes them
 * for a pipeline: child A leads a new group (setpgid(0, 0)), child B joins A's group
 * (setpgid(0, A)), child C stays in the parent's. After restore each child reports its
 * pgid and its parent's pid; kill(-A, SIGUSR1) must reach A and B, and not C.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <sys/wait.h>

#include "zdtm.h"

static volatile sig_atomic_t got_usr1;
static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }

/* A child: joins `group` (0: its own, -1: none), then answers each byte on `ask` with its
 * pgid, its parent's pid and whether SIGUSR1 reached it. */
static void child(pid_t group, int ask, int answer)
{
    if (group >= 0 && setpgid(0, group))
        _exit(2);
    char c;
    while (read_full(ask, &c, 1) == 0) {
        int report[3] = {(int)getpgrp(), (int)getppid(), (int)got_usr1};
        if (write_full(answer, report, sizeof report))
            _exit(3);
    }
    _exit(0);
}

int main(void)
{
    start();
    signal(SIGUSR1, on_usr1);
    int ask[3][2], answer[2];
    if (pipe(answer)) {
        printf("FAIL pipe: %s\n", strerror(errno));
        return 1;
    }
    pid_t pids[3];
    for (int i = 0; i < 3; i++) {
        if (pipe(ask[i])) {
            printf("FAIL pipe: %s\n", strerror(errno));
            return 1;
        }
        pid_t group = i == 0 ? 0 : i == 1 ? pids[0] : -1;
        pids[i] = fork();
        if (pids[i] == 0) {
            /* Only the parent may hold the write ends: a child sees EOF when it closes. */
            for (int j = 0; j <= i; j++)
                close(ask[j][1]);
            child(group, ask[i][0], answer[1]);
        }
        close(ask[i][0]);
        /* As a shell does: the parent sets the group too, so it is set before either runs on. */
        if (group >= 0)
            setpgid(pids[i], group == 0 ? pids[i] : group);
    }
    for (int i = 0; i < 3; i++) {
        int report[3];
        if (write_full(ask[i][1], "?", 1) || read_full(answer[0], report, sizeof report)) {
            printf("FAIL set-up report %d\n", i);
            return 1;
        }
    }
    ready_then_wait();
    if (kill(-pids[0], SIGUSR1))
        FAILED("kill(-A): %s", strerror(errno));
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
    pid_t want_group[3] = {pids[0], pids[0], getpgrp()};
    int want_signal[3] = {1, 1, 0};
    for (int i = 0; i < 3; i++) {
        int report[3];
        if (write_full(ask[i][1], "?", 1) || read_full(answer[0], report, sizeof report)) {
            FAILED("no report from child %d", i);
            break;
        }
        if (report[0] != want_group[i])
            FAILED("child %d is in group %d, expected %d", i, report[0], (int)want_group[i]);
        if (report[1] != getpid())
            FAILED("child %d has parent %d, expected %d", i, report[1], (int)getpid());
        if (report[2] != want_signal[i])
            FAILED("child %d %s the group signal", i, report[2] ? "got" : "missed");
    }
    for (int i = 0; i < 3; i++) {
        close(ask[i][1]);
        waitpid(pids[i], NULL, 0);
    }
    return verdict();
}
