/*
 * pgrp_session - the program leads a new session (setsid) and forks a child that leads its
 * own process group (setpgid(0, 0)). After restore getsid/getpgid of both, seen from the
 * parent and from the child itself, must be the same.
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
    pid_t me = getpid();
    if (setsid() != me) {
        printf("FAIL setsid: %s\n", strerror(errno));
        return 1;
    }
    int sync[2], go[2], back[2];
    if (pipe(sync) || pipe(go) || pipe(back)) {
        printf("FAIL pipe: %s\n", strerror(errno));
        return 1;
    }
    pid_t child = fork_or_fail();
    if (child == 0) {
        if (setpgid(0, 0))
            _exit(2);
        if (write_full(sync[1], "s", 1))
            _exit(3);
        char c;
        if (read_full(go[0], &c, 1))
            _exit(4);
        int ids[4] = {(int)getpid(), (int)getsid(0), (int)getpgid(0), (int)getppid()};
        _exit(write_full(back[1], ids, sizeof ids) ? 5 : 0);
    }
    close(sync[1]);
    close(go[0]);
    close(back[1]);
    char c;
    if (read_full(sync[0], &c, 1)) {
        printf("FAIL the child did not set up its group\n");
        waitpid(child, NULL, 0);
        return 1;
    }
    ready_then_wait();

    if (getsid(0) != me)
        FAILED("getsid(0) = %d, expected %d", (int)getsid(0), (int)me);
    if (getpgid(0) != me)
        FAILED("getpgid(0) = %d, expected %d", (int)getpgid(0), (int)me);
    if (getsid(child) != me)
        FAILED("getsid(child) = %d, expected %d", (int)getsid(child), (int)me);
    if (getpgid(child) != child)
        FAILED("getpgid(child) = %d, expected %d", (int)getpgid(child), (int)child);
    if (write_full(go[1], "g", 1))
        FAILED("write go: %s", strerror(errno));
    int ids[4] = {0, 0, 0, 0};
    if (read_full(back[0], ids, sizeof ids))
        FAILED("no report from the child");
    else if (ids[0] != child || ids[1] != me || ids[2] != child || ids[3] != me)
        FAILED("child sees pid %d sid %d pgid %d ppid %d, expected %d %d %d %d", ids[0], ids[1],
               ids[2], ids[3], (int)child, (int)me, (int)child, (int)me);
    reap_child(child);
    return verdict();
}
