/*
 * termhandler.c - a program with its own SIGTERM handler: it ticks every 30 ms; on SIGTERM
 * it prints who sent the signal (si_pid, si_code) and exits 0, as a program that shuts down
 * cleanly does. Used to check that a signal the guard delivers after its checkpoint reaches
 * the program's handler with its original sender.
 *
 * Usage:  termhandler <ticks>
 * Output: "pid <pid>", "tick <i>" every 30 ms, then "done", or on SIGTERM
 *         "got SIGTERM from <si_pid> code <si_code>".
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t got_term;
static volatile pid_t sender;
static volatile int code;

static void on_term(int sig, siginfo_t *info, void *ctx)
{
    (void)sig;
    (void)ctx;
    sender = info->si_pid;
    code = info->si_code;
    got_term = 1;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    long ticks = argc > 1 ? strtol(argv[1], NULL, 10) : 100;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_term;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGTERM, &sa, NULL);
    printf("pid %d\n", getpid());
    struct timespec tick = {0, 30 * 1000 * 1000};
    for (long i = 1; i <= ticks; i++) {
        if (got_term) {
            printf("got SIGTERM from %d code %d\n", (int)sender, code);
            return 0;
        }
        printf("tick %ld\n", i);
        nanosleep(&tick, NULL);
    }
    printf("done\n");
    return 0;
}
