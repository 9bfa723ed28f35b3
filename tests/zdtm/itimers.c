/*
 * itimers - interval timers: ITIMER_REAL set with alarm() (30 s), ITIMER_VIRTUAL (2 s
 * every 1 s of CPU time) and ITIMER_PROF (5 s, no interval). After restore getitimer must
 * show each still armed with no more time left than before the checkpoint (the time
 * left is kept, not reset; CPU-time timers within a tick) and the same interval; the virtual timer must then fire
 * (SIGVTALRM) while the program burns CPU, and alarm(0) must return the time left.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>

#include "zdtm.h"

static volatile sig_atomic_t vtalrms;
static void on_vtalrm(int sig) { (void)sig; vtalrms++; }

static long us(struct timeval tv) { return tv.tv_sec * 1000000L + tv.tv_usec; }

int main(void)
{
    start();
    signal(SIGVTALRM, on_vtalrm);
    struct itimerval virt = {{1, 0}, {2, 0}}, prof = {{0, 0}, {5, 0}};
    alarm(30);
    if (setitimer(ITIMER_VIRTUAL, &virt, NULL) || setitimer(ITIMER_PROF, &prof, NULL)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        return 1;
    }
    struct itimerval before[3];
    for (int w = 0; w < 3; w++)
        getitimer(w, &before[w]);
    ready_then_wait();

    struct itimerval now[3];
    for (int w = 0; w < 3; w++) {
        if (getitimer(w, &now[w])) {
            FAILED("getitimer(%d): %s", w, strerror(errno));
            continue;
        }
        if (us(now[w].it_value) == 0)
            FAILED("interval timer %d is disarmed", w);
        /* The kernel adds a tick to a CPU-time timer each time it is set, so that it
         * never fires early: the restore's setitimer may add one more (up to 10 ms). */
        else if (us(now[w].it_value) > us(before[w].it_value) + (w == ITIMER_REAL ? 0 : 10000))
            FAILED("interval timer %d has %ld us left, more than the %ld before the checkpoint",
                   w, us(now[w].it_value), us(before[w].it_value));
        if (us(now[w].it_interval) != us(before[w].it_interval))
            FAILED("interval timer %d's interval is %ld us, was %ld", w,
                   us(now[w].it_interval), us(before[w].it_interval));
    }
    if (us(now[ITIMER_REAL].it_value) < 25 * 1000000L)
        FAILED("alarm has only %ld us left", us(now[ITIMER_REAL].it_value));
    /* Burn CPU until the virtual timer fires (at most ~2 s of CPU). */
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    volatile unsigned long spin = 0;
    do {
        for (int i = 0; i < 1000000; i++)
            spin++;
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while (!vtalrms && t.tv_sec - t0.tv_sec < 10);
    if (!vtalrms)
        FAILED("SIGVTALRM never came");
    unsigned left = alarm(0);
    if (left < 20 || left > 30)
        FAILED("alarm(0) says %u s were left", left);
    return verdict();
}
