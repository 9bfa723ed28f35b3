/*
 * timers_job.c - a job paced by kernel timers: POSIX timer A (CLOCK_MONOTONIC, SIGRTMIN,
 * sival = a pointer, every 30 ms) makes the ticks; POSIX timer B (CLOCK_BOOTTIME,
 * SIGEV_THREAD_ID to the main thread, SIGRTMIN+1, sival_int 7, every 10 ms), alarm()
 * (ITIMER_REAL, re-armed for 1 s each time it fires), and setitimer ITIMER_VIRTUAL and
 * ITIMER_PROF (every 20 ms of CPU time, fed by 3 ms of CPU per tick) run beside it. Every
 * signal is taken with sigwaitinfo, so the output depends only on which timers work:
 * a restore that loses a timer, its id, its sival or its thread prints a different line.
 *
 * Usage:  timers_job <ticks>
 * Output: "pid <pid>"
 *         "tick <n> pid=<pid> a=<id>:<sival ok> [b=<fired in the last 10 ticks>]
 *          [alarm=<fired in the last 50 ticks> virt=<..> prof=<..>]"
 *         "done"
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int marker;

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
        perror("timer_create");
        exit(1);
    }
    return t;
}

static void every(timer_t t, long ms)
{
    struct itimerspec its = {{ms / 1000, (ms % 1000) * 1000000L}, {ms / 1000, (ms % 1000) * 1000000L}};
    if (timer_settime(t, 0, &its, NULL)) {
        perror("timer_settime");
        exit(1);
    }
}

/* Uses `ms` milliseconds of this thread's CPU time. */
static void burn(long ms)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
    volatile unsigned long spin = 0;
    do {
        for (int i = 0; i < 10000; i++)
            spin++;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    } while ((t.tv_sec - t0.tv_sec) * 1000L + (t.tv_nsec - t0.tv_nsec) / 1000000L < ms);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2) {
        fprintf(stderr, "usage: timers_job <ticks>\n");
        return 2;
    }
    long ticks = strtol(argv[1], NULL, 10);
    printf("pid %d\n", getpid());

    sigset_t set;
    sigemptyset(&set);
    int sigs[] = {SIGRTMIN, SIGRTMIN + 1, SIGALRM, SIGVTALRM, SIGPROF};
    for (unsigned i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        sigaddset(&set, sigs[i]);
    sigprocmask(SIG_BLOCK, &set, NULL);

    union sigval none = {0}, va = {.sival_ptr = &marker}, vb = {.sival_int = 7};
    /* A gap before A's id: ids are restored as they were, not renumbered. */
    timer_t gap = make(CLOCK_MONOTONIC, SIGEV_NONE, 0, none);
    timer_t a = make(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN, va);
    timer_t b = make(CLOCK_BOOTTIME, SIGEV_THREAD_ID, SIGRTMIN + 1, vb);
    timer_delete(gap);
    every(a, 30);
    every(b, 10);
    alarm(1);
    struct itimerval cpu = {{0, 20000}, {0, 20000}};
    setitimer(ITIMER_VIRTUAL, &cpu, NULL);
    setitimer(ITIMER_PROF, &cpu, NULL);

    long tick = 0, b_fired = 0, alarms = 0, virt = 0, prof = 0;
    while (tick < ticks) {
        siginfo_t si;
        int sig = sigwaitinfo(&set, &si);
        if (sig == SIGRTMIN + 1) {
            b_fired += si.si_value.sival_int == 7 && si.si_timerid == (int)(intptr_t)b;
        } else if (sig == SIGALRM) {
            alarms++;
            alarm(1);
        } else if (sig == SIGVTALRM) {
            virt++;
        } else if (sig == SIGPROF) {
            prof++;
        } else if (sig == SIGRTMIN) {
            tick++;
            int ok = si.si_value.sival_ptr == &marker && si.si_timerid == (int)(intptr_t)a;
            char extra[128] = "";
            if (tick % 10 == 0) {
                snprintf(extra, sizeof extra, " b=%d", b_fired > 0);
                b_fired = 0;
            }
            if (tick % 50 == 0) {
                size_t n = strlen(extra);
                snprintf(extra + n, sizeof extra - n, " alarm=%d virt=%d prof=%d", alarms > 0,
                         virt > 0, prof > 0);
                alarms = virt = prof = 0;
            }
            printf("tick %ld pid=%d a=%d:%d%s\n", tick, getpid(), (int)(intptr_t)a, ok, extra);
            burn(3);
        }
    }
    printf("done\n");
    return 0;
}
