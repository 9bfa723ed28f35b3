/*
 * pidfd_zombie - a pidfd (pidfd_open) of a child that exited 7 before the checkpoint and
 * was not reaped: a zombie, still the parent's to collect. After restore: fcntl flags and
 * the fdinfo `Pid:` line are unchanged, the pidfd polls readable at once, and
 * waitid(P_PIDFD) through it collects the child: its PID, CLD_EXITED, status 7.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zdtm.h"
#include "fdinfo.h"
#include "pidfd.h"

#define EXIT_CODE 7

int main(void)
{
    start();
    pid_t zombie = fork_or_fail();
    if (zombie == 0)
        _exit(EXIT_CODE);
    while (proc_state(zombie) != 'Z') {
        struct timespec ts = {0, 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    int fd = pidfd_open(zombie, 0);
    char pid_was[32];
    if (fd < 0 || fdinfo_value(fd, "Pid:", pid_was, sizeof pid_was) != 1 ||
        atoi(pid_was) != zombie) {
        printf("FAIL set-up: pidfd_open of the zombie %d: %s\n", (int)zombie, strerror(errno));
        return 1;
    }
    struct fd_flags was = fd_flags_of(fd);
    ready_then_wait();

    CHECK_FD_FLAGS("pidfd of the zombie", fd, was);
    char now[32] = "";
    if (fdinfo_value(fd, "Pid:", now, sizeof now) != 1 || strcmp(now, pid_was))
        FAILED("fdinfo `Pid:` is `%s`, was `%s`", now, pid_was);
    if (!exited(fd, 0))
        FAILED("the pidfd of an exited child does not poll readable");
    siginfo_t info;
    memset(&info, 0, sizeof info);
    if (waitid((idtype_t)P_PIDFD, (id_t)fd, &info, WEXITED | WNOHANG))
        FAILED("waitid(P_PIDFD): %s", strerror(errno));
    else if (info.si_pid != zombie || info.si_code != CLD_EXITED || info.si_status != EXIT_CODE)
        FAILED("waitid(P_PIDFD): pid %d code %d status %d, expected %d exited %d",
               (int)info.si_pid, info.si_code, info.si_status, (int)zombie, EXIT_CODE);
    return verdict();
}
