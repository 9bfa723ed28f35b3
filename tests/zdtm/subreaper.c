/*
 * subreaper - PR_SET_CHILD_SUBREAPER on the process. After restore PR_GET_CHILD_SUBREAPER
 * must give 1, and the flag must work: an orphaned grandchild (its parent exits) is
 * reparented to this process, which then reaps it.
 */
#define _GNU_SOURCE
#include <sys/prctl.h>
#include <sys/wait.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

int main(void)
{
    start();
    if (prctl(PR_SET_CHILD_SUBREAPER, 1)) {
        printf("FAIL PR_SET_CHILD_SUBREAPER: %s\n", strerror(errno));
        return 1;
    }
    ready_then_wait();

    int flag = -1;
    if (prctl(PR_GET_CHILD_SUBREAPER, &flag))
        FAILED("PR_GET_CHILD_SUBREAPER: %s", strerror(errno));
    else if (flag != 1)
        FAILED("PR_GET_CHILD_SUBREAPER gives %d, expected 1", flag);
    int p[2];
    if (pipe(p)) {
        FAILED("pipe: %s", strerror(errno));
        return verdict();
    }
    pid_t me = getpid();
    pid_t child = fork();
    if (child < 0) {
        FAILED("fork: %s", strerror(errno));
        return verdict();
    }
    if (child == 0) {
        pid_t mid = getpid();
        pid_t grand = fork();
        if (grand < 0)
            _exit(2);
        if (grand == 0) {
            /* wait (at most 5 s) until the middle process is gone, then report the parent */
            for (int i = 0; i < 500 && getppid() == mid; i++) {
                struct timespec ts = {0, 10 * 1000 * 1000};
                nanosleep(&ts, NULL);
            }
            int ids[2] = {(int)getpid(), (int)getppid()};
            _exit(write_full(p[1], ids, sizeof ids) ? 3 : 0);
        }
        _exit(0);
    }
    close(p[1]);
    int st = 0;
    if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        FAILED("middle child status 0x%x", st);
    int ids[2] = {0, 0};
    if (read_full(p[0], ids, sizeof ids)) {
        FAILED("no report from the grandchild");
    } else {
        if (ids[1] != me)
            FAILED("the orphaned grandchild's parent is %d, expected %d (the subreaper)", ids[1],
                   (int)me);
        pid_t w = waitpid(ids[0], &st, 0);
        if (w != ids[0])
            FAILED("reaping the grandchild %d: %s", ids[0], strerror(errno));
        else if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
            FAILED("grandchild status 0x%x", st);
    }
    return verdict();
}
