/* zombie.h - the body of zombie.c and zombie_signal.c (KILLED). */#define _GNU_SOURCE
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
#ifdef KILLED
    if (child == 0) {
        for (;;)
            pause();
    }
    kill(child, SIGKILL);
#else
    if (child == 0)
        _exit(42);
#endif
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, (id_t)child, &si, WEXITED | WNOWAIT)) {
        printf("FAIL waitid: %s\n", strerror(errno));
        return 1;
    }
    ready_then_wait();

    char st = proc_state(child);
    if (st != 'Z')
        FAILED("child %d is in state %c, expected Z", (int)child, st);
    int status = 0;
    pid_t w = waitpid(child, &status, WNOHANG);
    if (w != child)
        FAILED("waitpid(%d, WNOHANG) gave %d (%s)", (int)child, (int)w,
               w < 0 ? strerror(errno) : "not exited");
#ifdef KILLED
    else if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL)
        FAILED("status 0x%x, expected killed by signal 9", status);
#else
    else if (!WIFEXITED(status) || WEXITSTATUS(status) != 42)
        FAILED("status 0x%x, expected exit 42", status);
#endif
    if (w == 0) {
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
    }
    return verdict();
}
