/*
 * rtcount.c - exercises: real-time signals arriving at any moment, checkpoints included.
 * A SIGRTMIN handler (SA_SIGINFO, nothing blocked) counts deliveries; real-time signals
 * queue (one delivery per signal sent), so the count must end up equal to what a sender
 * (rtsend.c, another process) sent: a checkpoint that swallows one shows as a difference.
 * Between ticks the process sleeps (nanosleep, restarted after each signal) and computes.
 *
 * Usage:  rtcount <ticks>
 * Output: "pid <pid>"
 *         "tick <i> pid=<pid> received=<n>"   every 10 ms
 *         "final received=<n>"
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define TICK_MS 10

static atomic_long received;

static void on_rt(int sig, siginfo_t *info, void *ctx)
{
    (void)sig;
    (void)info;
    (void)ctx;
    atomic_fetch_add(&received, 1);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    int ticks = argc > 1 ? atoi(argv[1]) : 500;
    struct sigaction sa = {0};
    sa.sa_sigaction = on_rt;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGRTMIN, &sa, NULL) != 0) {
        perror("sigaction");
        return 2;
    }
    printf("pid %d\n", getpid());
    volatile unsigned long work = 0;
    for (int i = 0; i < ticks; i++) {
        sleep_ms(TICK_MS);
        for (int k = 0; k < 100000; k++)
            work += (unsigned long)k;
        printf("tick %d pid=%d received=%ld\n", i, getpid(), atomic_load(&received));
    }
    printf("final received=%ld\n", atomic_load(&received));
    return 0;
}
