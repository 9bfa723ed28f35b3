/*
 * pidfd - two pidfds (flags 0 and PIDFD_NONBLOCK) from pidfd_open of a forked child that
 * waits for SIGUSR1 and then exits 42, and a third of a second child that exited 7 before
 * the checkpoint (a zombie, not reaped). After restore: fcntl flags and the fdinfo `Pid:`
 * line (the child's PID) are unchanged; neither pidfd of the live child polls readable;
 * pidfd_send_signal(SIGUSR1) through the first reaches the child; both then poll readable
 * (within 10 s) and waitid(P_PIDFD) on the non-blocking one collects exit status 42. The
 * zombie's pidfd polls readable at once and waitid(P_PIDFD) on it collects exit status 7.
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
#include <unistd.h>

#include "zdtm.h"
#include "fdinfo.h"

#ifndef PIDFD_NONBLOCK
#define PIDFD_NONBLOCK O_NONBLOCK
#endif
#ifndef P_PIDFD
#define P_PIDFD 3
#endif

#define EXIT_CODE 42
#define ZOMBIE_EXIT_CODE 7
#define NFDS 3

static volatile sig_atomic_t got_usr1;
static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }

static int pidfd_open(pid_t pid, unsigned flags)
{
    return (int)syscall(SYS_pidfd_open, pid, flags);
}

static int pidfd_send_signal(int pidfd, int sig)
{
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

/* Whether pidfd polls readable (the process exited) within timeout_ms. */
static int exited(int pidfd, int timeout_ms)
{
    struct pollfd p = {pidfd, POLLIN, 0};
    return poll(&p, 1, timeout_ms) == 1 && (p.revents & POLLIN);
}

int main(void)
{
    start();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    pid_t child = fork_or_fail();
    if (child == 0) {
        while (!got_usr1) {
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        _exit(EXIT_CODE);
    }
    pid_t zombie = fork_or_fail();
    if (zombie == 0)
        _exit(ZOMBIE_EXIT_CODE);
    while (proc_state(zombie) != 'Z') {
        struct timespec ts = {0, 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    int fds[NFDS] = {pidfd_open(child, 0), pidfd_open(child, PIDFD_NONBLOCK),
                     pidfd_open(zombie, 0)};
    const pid_t of[NFDS] = {child, child, zombie};
    const char *const names[NFDS] = {"pidfd", "non-blocking pidfd", "pidfd of the zombie"};
    if (fds[0] < 0 || fds[1] < 0 || fds[2] < 0) {
        printf("FAIL pidfd_open: %s\n", strerror(errno));
        kill(child, SIGKILL);
        return 1;
    }
    struct fd_flags was[NFDS];
    char pid_was[NFDS][32];
    for (int i = 0; i < NFDS; i++) {
        was[i] = fd_flags_of(fds[i]);
        if (fdinfo_value(fds[i], "Pid:", pid_was[i], sizeof pid_was[i]) != 1 ||
            atoi(pid_was[i]) != of[i]) {
            printf("FAIL set-up: fdinfo `Pid:` of the %s is not %d\n", names[i], (int)of[i]);
            kill(child, SIGKILL);
            return 1;
        }
    }
    ready_then_wait();

    for (int i = 0; i < NFDS; i++) {
        CHECK_FD_FLAGS(names[i], fds[i], was[i]);
        char now[32] = "";
        if (fdinfo_value(fds[i], "Pid:", now, sizeof now) != 1 || strcmp(now, pid_was[i]))
            FAILED("%s: fdinfo `Pid:` is `%s`, was `%s`", names[i], now, pid_was[i]);
        if (exited(fds[i], 0) != (of[i] == zombie))
            FAILED("%s %s readable", names[i],
                   of[i] == zombie ? "of an exited process does not poll"
                                   : "polls readable while the child lives");
    }
    siginfo_t info;
    memset(&info, 0, sizeof info);
    if (waitid((idtype_t)P_PIDFD, (id_t)fds[2], &info, WEXITED | WNOHANG))
        FAILED("waitid(P_PIDFD) of the zombie: %s", strerror(errno));
    else if (info.si_pid != zombie || info.si_code != CLD_EXITED ||
             info.si_status != ZOMBIE_EXIT_CODE)
        FAILED("waitid(P_PIDFD) of the zombie: pid %d code %d status %d, expected %d exited %d",
               (int)info.si_pid, info.si_code, info.si_status, (int)zombie, ZOMBIE_EXIT_CODE);
    if (fail_msg[0]) {
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
        return verdict();
    }
    if (pidfd_send_signal(fds[0], SIGUSR1)) {
        FAILED("pidfd_send_signal: %s", strerror(errno));
        kill(child, SIGUSR1);
    }
    for (int i = 0; i < 2; i++)
        if (!exited(fds[i], 10000))
            FAILED("%s did not poll readable within 10 s of the child's exit", names[i]);
    memset(&info, 0, sizeof info);
    if (waitid((idtype_t)P_PIDFD, (id_t)fds[1], &info, WEXITED)) {
        FAILED("waitid(P_PIDFD): %s", strerror(errno));
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
    } else if (info.si_pid != child || info.si_code != CLD_EXITED ||
               info.si_status != EXIT_CODE)
        FAILED("waitid(P_PIDFD): pid %d code %d status %d, expected %d exited %d",
               (int)info.si_pid, info.si_code, info.si_status, (int)child, EXIT_CODE);
    return verdict();
}
