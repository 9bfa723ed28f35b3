/*
 * signalfd - a signalfd (SFD_NONBLOCK) for SIGUSR1 and SIGRTMIN, both blocked; before the
 * checkpoint one SIGUSR1 (kill) and one SIGRTMIN (sigqueue, value 4242) are pending.
 * After restore: fcntl flags and the fdinfo `sigmask:` line are unchanged, the process mask
 * still blocks both; reading the signalfd gives SIGUSR1 (SI_USER from this process), then
 * SIGRTMIN (SI_QUEUE, value 4242), then EAGAIN; a SIGUSR1 sent after restore is read too,
 * and nothing else is there.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "zdtm.h"
#include "fdinfo.h"

#define VALUE 4242

/* Reads one siginfo: 0, or -errno. */
static int read_one(int sfd, struct signalfd_siginfo *si)
{
    ssize_t r = read(sfd, si, sizeof *si);
    if (r < 0)
        return -errno;
    return r == sizeof *si ? 0 : -EIO;
}

static void expect_signal(const char *step, int sfd, int signo, int code, int value)
{
    struct signalfd_siginfo si;
    int r = read_one(sfd, &si);
    if (r) {
        FAILED("%s: read: %s", step, strerror(-r));
        return;
    }
    if ((int)si.ssi_signo != signo)
        FAILED("%s: signal %u, expected %d", step, si.ssi_signo, signo);
    else if (si.ssi_code != code)
        FAILED("%s: si_code %d, expected %d", step, si.ssi_code, code);
    else if ((pid_t)si.ssi_pid != getpid() || si.ssi_uid != getuid())
        FAILED("%s: sender pid %u uid %u, expected %d and %d", step, si.ssi_pid, si.ssi_uid,
               (int)getpid(), (int)getuid());
    else if (code == SI_QUEUE && si.ssi_int != value)
        FAILED("%s: value %d, expected %d", step, si.ssi_int, value);
}

int main(void)
{
    start();
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGRTMIN);
    union sigval val = {.sival_int = VALUE};
    int sfd;
    if (sigprocmask(SIG_BLOCK, &set, NULL) || (sfd = signalfd(-1, &set, SFD_NONBLOCK)) < 0 ||
        kill(getpid(), SIGUSR1) || sigqueue(getpid(), SIGRTMIN, val)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        return 1;
    }
    char mask_was[64];
    if (fdinfo_value(sfd, "sigmask:", mask_was, sizeof mask_was) != 1) {
        printf("FAIL set-up: no sigmask: line in the signalfd's fdinfo\n");
        return 1;
    }
    struct fd_flags flags_was = fd_flags_of(sfd);
    ready_then_wait();

    CHECK_FD_FLAGS("signalfd", sfd, flags_was);
    char mask[64] = "";
    if (fdinfo_value(sfd, "sigmask:", mask, sizeof mask) != 1 || strcmp(mask, mask_was))
        FAILED("signalfd sigmask `%s`, was `%s`", mask, mask_was);
    sigset_t blocked;
    sigprocmask(SIG_BLOCK, NULL, &blocked);
    if (!sigismember(&blocked, SIGUSR1) || !sigismember(&blocked, SIGRTMIN))
        FAILED("SIGUSR1 or SIGRTMIN no longer blocked");

    expect_signal("pending SIGUSR1", sfd, SIGUSR1, SI_USER, 0);
    expect_signal("pending SIGRTMIN", sfd, SIGRTMIN, SI_QUEUE, VALUE);
    struct signalfd_siginfo si;
    int r = read_one(sfd, &si);
    if (r != -EAGAIN)
        FAILED("third read: %s, expected EAGAIN", r ? strerror(-r) : "a signal");

    if (kill(getpid(), SIGUSR1))
        FAILED("kill: %s", strerror(errno));
    expect_signal("new SIGUSR1", sfd, SIGUSR1, SI_USER, 0);
    if ((r = read_one(sfd, &si)) != -EAGAIN)
        FAILED("read after the new signal: %s, expected EAGAIN",
               r ? strerror(-r) : "another signal");
    return verdict();
}
