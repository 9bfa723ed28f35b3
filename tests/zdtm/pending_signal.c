/*
 * pending_signal - SIGUSR1 blocked and raised: pending at checkpoint time. After restore
 * sigpending() must contain SIGUSR1 (and not SIGUSR2 or others), the mask must still block
 * SIGUSR1 and not SIGUSR2; unblocking must deliver SIGUSR1 exactly once.
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

static volatile sig_atomic_t usr1_count;
static void on_usr1(int sig) { (void)sig; usr1_count++; }

int main(void)
{
    start();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    if (sigprocmask(SIG_BLOCK, &block, NULL) || raise(SIGUSR1)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        return 1;
    }
    ready_then_wait();

    sigset_t pend, mask;
    sigemptyset(&pend);
    if (sigpending(&pend) || sigprocmask(SIG_BLOCK, NULL, &mask))
        FAILED("sigpending/sigprocmask: %s", strerror(errno));
    if (!sigismember(&pend, SIGUSR1))
        FAILED("SIGUSR1 is no longer pending");
    for (int s = 1; s < SIGRTMIN; s++)
        if (s != SIGUSR1 && sigismember(&pend, s))
            FAILED("signal %d is pending too", s);
    if (!sigismember(&mask, SIGUSR1))
        FAILED("SIGUSR1 is no longer blocked");
    if (sigismember(&mask, SIGUSR2))
        FAILED("SIGUSR2 is blocked");
    if (usr1_count != 0)
        FAILED("SIGUSR1 was delivered while blocked (%d times)", (int)usr1_count);
    if (sigprocmask(SIG_UNBLOCK, &block, NULL))
        FAILED("unblock: %s", strerror(errno));
    if (usr1_count != 1)
        FAILED("unblocking delivered SIGUSR1 %d times, expected once", (int)usr1_count);
    return verdict();
}
