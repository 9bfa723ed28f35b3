/*
 * posix_timer_pending - a periodic timer (every 100 ms, SIGRTMIN, blocked) whose signal is
 * queued at checkpoint time: the kernel queues no second signal for it until the first
 * is taken, and counts the expiries meanwhile as overruns. After restore exactly one
 * signal of the timer must be waiting, with its sival and timer id, and an overrun that
 * counts the expiries since; the timer must still run (a next signal within 200 ms).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "zdtm.h"

int main(void)
{
    start();
    sigset_t rt;
    sigemptyset(&rt);
    sigaddset(&rt, SIGRTMIN);
    sigprocmask(SIG_BLOCK, &rt, NULL);
    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_SIGNAL;
    ev.sigev_signo = SIGRTMIN;
    ev.sigev_value.sival_int = 4242;
    timer_t t;
    struct itimerspec its = {{0, 100000000}, {0, 100000000}};
    if (timer_create(CLOCK_MONOTONIC, &ev, &t) || timer_settime(t, 0, &its, NULL)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        return 1;
    }
    struct timespec wait = {0, 350000000};
    nanosleep(&wait, NULL); /* three expiries: one signal queued, two overruns */
    ready_then_wait();

    siginfo_t si;
    struct timespec none = {0, 0};
    if (sigtimedwait(&rt, &si, &none) != SIGRTMIN)
        FAILED("no timer signal was waiting: %s", strerror(errno));
    else if (si.si_code != SI_TIMER || si.si_value.sival_int != 4242 ||
             si.si_timerid != (int)(intptr_t)t)
        FAILED("the waiting signal: code %d value %d timerid %d", si.si_code,
               si.si_value.sival_int, si.si_timerid);
    else if (si.si_overrun < 1 || si.si_overrun > 1000)
        FAILED("overrun %d: the expiries while the signal waited are not counted",
               si.si_overrun);
    if (sigtimedwait(&rt, &si, &none) == SIGRTMIN)
        FAILED("a second signal of the timer was waiting (code %d, overrun %d)", si.si_code,
               si.si_overrun);
    struct timespec next = {0, 200000000};
    if (sigtimedwait(&rt, &si, &next) != SIGRTMIN)
        FAILED("the timer stopped after the restore");
    return verdict();
}
