/*
 * sigtrap_handler - a SIGTRAP handler (SA_SIGINFO, with a mask) and a SIGSEGV handler must
 * come back: the restorer drives the process with int3 traps, which with every signal
 * blocked make the kernel reset the SIGTRAP action. After restore sigaction(SIGTRAP) must
 * give the same handler, flags and mask, and a raised SIGTRAP must reach the handler.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "zdtm.h"

static volatile sig_atomic_t traps, trap_code_ok;

static void on_trap(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    traps++;
    trap_code_ok = sig == SIGTRAP && si && si->si_signo == SIGTRAP;
}

static void on_segv(int sig) { (void)sig; }

int main(void)
{
    start();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_trap;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGUSR1);
    struct sigaction segv;
    memset(&segv, 0, sizeof segv);
    segv.sa_handler = on_segv;
    if (sigaction(SIGTRAP, &sa, NULL) || sigaction(SIGSEGV, &segv, NULL)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        return 1;
    }
    ready_then_wait();

    struct sigaction old;
    memset(&old, 0, sizeof old);
    if (sigaction(SIGTRAP, NULL, &old))
        FAILED("sigaction(SIGTRAP): %s", strerror(errno));
    else if (old.sa_sigaction != on_trap)
        FAILED("SIGTRAP handler %p, expected %p", (void *)old.sa_sigaction, (void *)on_trap);
    else if (!(old.sa_flags & SA_SIGINFO) || !(old.sa_flags & SA_RESTART))
        FAILED("SIGTRAP flags 0x%x lost SA_SIGINFO|SA_RESTART", old.sa_flags);
    else if (!sigismember(&old.sa_mask, SIGUSR1) || sigismember(&old.sa_mask, SIGINT))
        FAILED("SIGTRAP's mask changed");
    struct sigaction old_segv;
    if (sigaction(SIGSEGV, NULL, &old_segv) || old_segv.sa_handler != on_segv)
        FAILED("SIGSEGV handler changed");
    if (!fail_msg[0]) {
        raise(SIGTRAP);
        if (traps != 1 || !trap_code_ok)
            FAILED("the SIGTRAP handler ran %d times (siginfo ok: %d)", (int)traps, (int)trap_code_ok);
    }
    return verdict();
}
