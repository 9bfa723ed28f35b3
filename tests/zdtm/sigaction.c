/*
 * sigaction - signal dispositions: SIGHUP with an SA_SIGINFO handler, SA_RESTART, and a
 * mask of SIGUSR1 and SIGTERM; SIGPIPE ignored. After restore sigaction(SIGHUP, NULL, &old)
 * must give the same handler, flags and mask, SIGPIPE must still be ignored, and a raised
 * SIGHUP must reach the handler with its siginfo and with SIGUSR1/SIGTERM blocked during it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

static volatile sig_atomic_t hup_count, hup_signo, hup_mask_ok;

static void on_hup(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    sigset_t now;
    sigprocmask(SIG_BLOCK, NULL, &now);
    hup_count++;
    hup_signo = si ? si->si_signo : -1;
    hup_mask_ok = sigismember(&now, SIGUSR1) && sigismember(&now, SIGTERM) &&
                  sigismember(&now, SIGHUP) && !sigismember(&now, SIGINT) && sig == SIGHUP;
}

int main(void)
{
    start();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_hup;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGUSR1);
    sigaddset(&sa.sa_mask, SIGTERM);
    if (sigaction(SIGHUP, &sa, NULL) || signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
        printf("FAIL set-up: %s\n", strerror(errno));
        return 1;
    }
    ready_then_wait();

    struct sigaction old;
    memset(&old, 0, sizeof old);
    if (sigaction(SIGHUP, NULL, &old))
        FAILED("sigaction(SIGHUP): %s", strerror(errno));
    if (old.sa_sigaction != on_hup)
        FAILED("SIGHUP handler %p, expected %p", (void *)old.sa_sigaction, (void *)on_hup);
    int want = SA_SIGINFO | SA_RESTART;
    int extra = SA_NODEFER | SA_RESETHAND | SA_ONSTACK | SA_NOCLDSTOP | SA_NOCLDWAIT;
    if ((old.sa_flags & want) != want || (old.sa_flags & extra))
        FAILED("SIGHUP flags 0x%x, expected SA_SIGINFO|SA_RESTART (0x%x)", old.sa_flags, want);
    for (int s = 1; s < SIGRTMIN; s++) {
        int in = sigismember(&old.sa_mask, s);
        if (in != (s == SIGUSR1 || s == SIGTERM))
            FAILED("SIGHUP's mask %s signal %d", in ? "has" : "lacks", s);
    }
    struct sigaction pipe_act;
    if (sigaction(SIGPIPE, NULL, &pipe_act) || pipe_act.sa_handler != SIG_IGN)
        FAILED("SIGPIPE is no longer ignored");
    struct sigaction usr2_act;
    if (sigaction(SIGUSR2, NULL, &usr2_act) || usr2_act.sa_handler != on_usr2)
        FAILED("SIGUSR2's handler changed");
    raise(SIGHUP);
    if (hup_count != 1)
        FAILED("the SIGHUP handler ran %d times, expected once", (int)hup_count);
    else if (hup_signo != SIGHUP)
        FAILED("the handler's si_signo is %d", (int)hup_signo);
    else if (!hup_mask_ok)
        FAILED("the mask during the handler is not the action's mask");
    return verdict();
}
