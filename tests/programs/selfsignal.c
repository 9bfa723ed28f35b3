/*
 * selfsignal.c - a job that receives many signals: <count> times kill(getpid(), SIGUSR1),
 * each counted by a handler. Measures what a tracer in the signal path (the guard) costs.
 *
 * Usage:  selfsignal <count>
 * Output: "pid <pid>", then "handled <n> in <ms> ms" (n == count).
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t handled;

static void on_usr1(int sig)
{
    (void)sig;
    handled++;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    long count = argc > 1 ? strtol(argv[1], NULL, 10) : 100000;
    signal(SIGUSR1, on_usr1);
    printf("pid %d\n", getpid());
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < count; i++)
        kill(getpid(), SIGUSR1);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
    printf("handled %ld in %.1f ms\n", (long)handled, ms);
    return 0;
}
