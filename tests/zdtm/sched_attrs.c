/*
 * sched_attrs - per-thread scheduling and timer slack: the main thread runs SCHED_OTHER
 * at nice 4 with a timer slack of 123 us, one thread SCHED_FIFO priority 7, one
 * SCHED_BATCH at nice 9 with SCHED_RESET_ON_FORK and a timer slack of 777 us. After
 * restore each thread checks its own policy, priority, nice, flags and timer slack.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "zdtm.h"

struct sched_attr {
    uint32_t size, policy;
    uint64_t flags;
    int32_t nice;
    uint32_t priority;
    uint64_t runtime, deadline, period;
};

struct want {
    uint32_t policy, priority;
    int nice;
    uint64_t flags;
    long slack; /* -1: not checked (a real-time thread's slack is the kernel's) */
    volatile int set_up, checked;
    char why[160];
};

static volatile int go;

static int apply(struct want *w)
{
    struct sched_attr a = {.size = sizeof a, .policy = w->policy, .flags = w->flags,
                           .nice = w->nice, .priority = w->priority};
    if (syscall(SYS_sched_setattr, 0, &a, 0))
        return -1;
    if (w->slack > 0 && prctl(PR_SET_TIMERSLACK, w->slack, 0, 0, 0))
        return -1;
    return 0;
}

static void check(struct want *w)
{
    struct sched_attr a;
    memset(&a, 0, sizeof a);
    if (syscall(SYS_sched_getattr, 0, &a, sizeof a, 0)) {
        snprintf(w->why, sizeof w->why, "sched_getattr: %s", strerror(errno));
        return;
    }
    if (a.policy != w->policy || a.priority != w->priority || a.nice != w->nice ||
        (a.flags & 1) != w->flags)
        snprintf(w->why, sizeof w->why, "policy %u prio %u nice %d flags %llu, want %u %u %d %llu",
                 a.policy, a.priority, a.nice, (unsigned long long)a.flags, w->policy,
                 w->priority, w->nice, (unsigned long long)w->flags);
    long slack = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
    if (w->slack > 0 && slack != w->slack)
        snprintf(w->why, sizeof w->why, "timer slack %ld, want %ld", slack, w->slack);
}

static void *thread_main(void *arg)
{
    struct want *w = arg;
    if (apply(w))
        snprintf(w->why, sizeof w->why, "set-up: %s", strerror(errno));
    w->set_up = 1;
    while (!go) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    check(w);
    w->checked = 1;
    return NULL;
}

int main(void)
{
    start();
    struct want self = {SCHED_OTHER, 0, 4, 0, 123000, 0, 0, ""};
    struct want fifo = {SCHED_FIFO, 7, 0, 0, -1, 0, 0, ""};
    struct want batch = {SCHED_BATCH, 0, 9, 1 /* RESET_ON_FORK */, 777000, 0, 0, ""};
    pthread_t t1, t2;
    if (apply(&self) || pthread_create(&t1, NULL, thread_main, &fifo) ||
        pthread_create(&t2, NULL, thread_main, &batch)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        return 1;
    }
    while (!fifo.set_up || !batch.set_up)
        usleep(1000);
    if (fifo.why[0] || batch.why[0]) {
        printf("FAIL %s%s\n", fifo.why, batch.why);
        return 1;
    }
    ready_then_wait();
    check(&self);
    go = 1;
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    if (self.why[0])
        FAILED("main thread: %s", self.why);
    if (fifo.why[0])
        FAILED("FIFO thread: %s", fifo.why);
    if (batch.why[0])
        FAILED("BATCH thread: %s", batch.why);
    return verdict();
}
