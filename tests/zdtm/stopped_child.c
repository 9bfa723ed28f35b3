/*
 * stopped_child - a child that stopped itself with SIGSTOP (the parent saw the stop with
 * WUNTRACED). After restore the child must still be stopped (state T in /proc/PID/stat);
 * after SIGCONT it must run on and exit with status 7.
 */
#define _GNU_SOURCE
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
    pid_t child = fork_or_fail();
    if (child == 0) {
        raise(SIGSTOP);
        _exit(7);
    }
    int st = 0;
    if (waitpid(child, &st, WUNTRACED) != child || !WIFSTOPPED(st)) {
        printf("FAIL the child did not stop: status 0x%x\n", st);
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
        return 1;
    }
    ready_then_wait();

    char s = proc_state(child);
    if (s != 'T')
        FAILED("child %d is in state %c after the restore, expected T (stopped)", (int)child, s);
    if (kill(child, SIGCONT))
        FAILED("SIGCONT: %s", strerror(errno));
    /* bounded wait for the exit */
    pid_t w = 0;
    for (int i = 0; i < 500 && w == 0; i++) {
        w = waitpid(child, &st, WNOHANG);
        if (w == 0) {
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    if (w == 0) {
        FAILED("the child did not exit within 5 s of SIGCONT (state %c)", proc_state(child));
        kill(child, SIGKILL);
        waitpid(child, &st, 0);
    } else if (w != child) {
        FAILED("waitpid: %s", strerror(errno));
    } else if (!(WIFEXITED(st) && WEXITSTATUS(st) == 7)) {
        FAILED("child status 0x%x, expected exit 7", st);
    }
    return verdict();
}
