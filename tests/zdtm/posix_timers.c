/*
 * posix_timers - timer_create timers keep their ids, notification, sigev_value, clock,
 * time left and interval:
 *  - A: CLOCK_MONOTONIC, SIGRTMIN with a pointer as sival, first expiry in 3 s, then
 *    every 20 s (so a restore that re-armed it with the interval would show ~20 s left);
 *  - B: CLOCK_BOOTTIME, SIGEV_THREAD_ID to the main thread, SIGRTMIN+1, sival_int 77,
 *    every 50 ms (it fires many times, its overrun must stay sane);
 *  - C: CLOCK_REALTIME, SIGEV_NONE, 1000 s;
 *  - D: CLOCK_PROCESS_CPUTIME_ID, SIGEV_NONE, 500 s of CPU time;
 *  - a gap in the ids: two timers created and deleted between them.
 * After restore timer_gettime on each id must answer with the same interval and no more
 * time left than before; A must fire about once within 4 s, with its sival and id.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

static int marker;

static long long ns(struct timespec t) { return t.tv_sec * 1000000000LL + t.tv_nsec; }

static timer_t make(clockid_t clock, int notify, int signo, union sigval v)
{
    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = notify;
    ev.sigev_signo = signo;
    ev.sigev_value = v;
    if (notify == SIGEV_THREAD_ID)
        ev._sigev_un._tid = gettid();
    timer_t t;
    if (timer_create(clock, &ev, &t)) {
        printf("FAIL timer_create(%d): %s\n", (int)clock, strerror(errno));
        exit(1);
    }
    return t;
}

static void arm(timer_t t, long long value_ns, long long interval_ns)
{
    struct itimerspec its = {{interval_ns / 1000000000, interval_ns % 1000000000},
                             {value_ns / 1000000000, value_ns % 1000000000}};
    if (timer_settime(t, 0, &its, NULL)) {
        printf("FAIL timer_settime: %s\n", strerror(errno));
        exit(1);
    }
}

int main(void)
{
    start();
    sigset_t rt;
    sigemptyset(&rt);
    sigaddset(&rt, SIGRTMIN);
    sigaddset(&rt, SIGRTMIN + 1);
    sigprocmask(SIG_BLOCK, &rt, NULL);

    union sigval pa = {.sival_ptr = &marker}, pb = {.sival_int = 77}, none = {0};
    timer_t a = make(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN, pa);
    timer_t gap1 = make(CLOCK_MONOTONIC, SIGEV_NONE, 0, none);
    timer_t gap2 = make(CLOCK_MONOTONIC, SIGEV_NONE, 0, none);
    timer_t b = make(CLOCK_BOOTTIME, SIGEV_THREAD_ID, SIGRTMIN + 1, pb);
    timer_delete(gap1);
    timer_delete(gap2);
    timer_t c = make(CLOCK_REALTIME, SIGEV_NONE, 0, none);
    timer_t d = make(CLOCK_PROCESS_CPUTIME_ID, SIGEV_NONE, 0, none);
    arm(a, 3000000000LL, 20000000000LL);
    arm(b, 50000000LL, 50000000LL);
    arm(c, 1000000000000LL, 0);
    arm(d, 500000000000LL, 7000000000LL);
    timer_t all[4] = {a, b, c, d};
    struct itimerspec before[4];
    for (int i = 0; i < 4; i++)
        timer_gettime(all[i], &before[i]);
    ready_then_wait();

    for (int i = 0; i < 4; i++) {
        struct itimerspec now;
        if (timer_gettime(all[i], &now)) {
            FAILED("timer %d (id %ld): timer_gettime: %s", i, (long)(intptr_t)all[i], strerror(errno));
            continue;
        }
        if (ns(now.it_interval) != ns(before[i].it_interval))
            FAILED("timer %d: interval %lld ns, was %lld", i, ns(now.it_interval),
                   ns(before[i].it_interval));
        if (ns(now.it_value) == 0)
            FAILED("timer %d is disarmed", i);
        else if (i != 1 && ns(now.it_value) > ns(before[i].it_value))
            FAILED("timer %d: %lld ns left, more than the %lld before the checkpoint", i,
                   ns(now.it_value), ns(before[i].it_value));
    }
    if (fail_msg[0])
        return verdict();
    /* B: a few of its signals, each with its value, to this thread. */
    for (int k = 0; k < 3; k++) {
        siginfo_t si;
        sigset_t only_b;
        sigemptyset(&only_b);
        sigaddset(&only_b, SIGRTMIN + 1);
        struct timespec wait = {2, 0};
        if (sigtimedwait(&only_b, &si, &wait) != SIGRTMIN + 1) {
            FAILED("timer B did not fire: %s", strerror(errno));
            break;
        }
        if (si.si_code != SI_TIMER || si.si_value.sival_int != 77 ||
            si.si_timerid != (int)(intptr_t)b)
            FAILED("timer B's signal: code %d value %d timerid %d", si.si_code,
                   si.si_value.sival_int, si.si_timerid);
        if (si.si_overrun < 0 || si.si_overrun > 1000)
            FAILED("timer B's overrun is %d", si.si_overrun);
    }
    /* A: fires once, within its time left (at most 3 s). */
    siginfo_t si;
    sigset_t only_a;
    sigemptyset(&only_a);
    sigaddset(&only_a, SIGRTMIN);
    struct timespec wait = {4, 0};
    if (sigtimedwait(&only_a, &si, &wait) != SIGRTMIN)
        FAILED("timer A did not fire within 4 s: %s", strerror(errno));
    else if (si.si_code != SI_TIMER || si.si_value.sival_ptr != &marker ||
             si.si_timerid != (int)(intptr_t)a)
        FAILED("timer A's signal: code %d value %p (want %p) timerid %d (want %d)", si.si_code,
               si.si_value.sival_ptr, (void *)&marker, si.si_timerid, (int)(intptr_t)a);
    else if (timer_getoverrun(a) != 0)
        FAILED("timer A's overrun is %d", timer_getoverrun(a));
    struct timespec none_wait = {0, 200000000};
    if (sigtimedwait(&only_a, &si, &none_wait) == SIGRTMIN)
        FAILED("timer A fired twice");
    return verdict();
}
