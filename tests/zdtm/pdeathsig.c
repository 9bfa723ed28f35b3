/*
 * pdeathsig - a child with PR_SET_PDEATHSIG(SIGUSR1). After restore the child reports
 * prctl(PR_GET_PDEATHSIG) and its parent over a pipe; it must be SIGUSR1 and the parent.
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
    pid_t me = getpid();
    int sync[2], go[2];
    if (pipe(sync) || pipe(go)) {
        printf("FAIL pipe: %s\n", strerror(errno));
        return 1;
    }
    pid_t child = fork_or_fail();
    if (child == 0) {
        close(sync[0]);
        close(go[1]);
        if (prctl(PR_SET_PDEATHSIG, SIGUSR1) || getppid() != me)
            _exit(2);
        if (write_full(sync[1], "s", 1))
            _exit(3);
        char c;
        if (read_full(go[0], &c, 1))
            _exit(4);
        int sig = -1;
        if (prctl(PR_GET_PDEATHSIG, &sig))
            sig = -2;
        int report[2] = {sig, (int)getppid()};
        _exit(write_full(sync[1], report, sizeof report) ? 5 : 0);
    }
    close(sync[1]);
    close(go[0]);
    char c;
    if (read_full(sync[0], &c, 1)) {
        printf("FAIL set-up in the child\n");
        waitpid(child, NULL, 0);
        return 1;
    }
    ready_then_wait();

    int report[2] = {0, 0};
    if (write_full(go[1], "g", 1) || read_full(sync[0], report, sizeof report))
        FAILED("no report from the child");
    else if (report[0] != SIGUSR1)
        FAILED("the child's PR_GET_PDEATHSIG is %d, expected %d (SIGUSR1)", report[0], SIGUSR1);
    else if (report[1] != me)
        FAILED("the child's parent is %d, expected %d", report[1], (int)me);
    reap_child(child);
    return verdict();
}
