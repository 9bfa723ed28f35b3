/*
 * signals.c - exercises: signal dispositions, the signal mask and pending signals.
 * SIGUSR1 has a handler (sigaction, SA_RESTART, sa_mask = {SIGTERM}) that counts calls;
 * every tick sends SIGUSR1 to itself (raise() and kill(getpid()) alternately) and prints the
 * count. SIGHUP is ignored (SIG_IGN). SIGUSR2 is blocked in the mask and one SIGUSR2 is left
 * pending (kill(getpid()) at start): if a restore loses the mask the pending SIGUSR2 kills the
 * process (exit 140); if it loses the pending signal, usr2_pending= turns 0.
 *
 * Usage:  signals <ticks>
 * Output: "pid <pid>"
 *         "tick <i> pid=<pid> usr1=<count> handler_ok=<0|1> flags=<sa_flags hex> hup_ign=<0|1>
 *          usr2_blocked=<0|1> usr2_pending=<0|1> mask=<first 64 bits of the mask, hex>"
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TICK_MS 30

static volatile sig_atomic_t usr1_count;

static void on_usr1(int sig)
{
    (void)sig;
    usr1_count++;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2) {
        fprintf(stderr, "usage: signals <ticks>\n");
        return 2;
    }
    long ticks = strtol(argv[1], NULL, 10);
    printf("pid %d\n", getpid());

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGTERM);
    sa.sa_flags = SA_RESTART;
    if (sigaction(SIGUSR1, &sa, NULL) != 0 || signal(SIGHUP, SIG_IGN) == SIG_ERR) {
        perror("sigaction");
        return 1;
    }
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR2);
    sigprocmask(SIG_BLOCK, &block, NULL);
    kill(getpid(), SIGUSR2);

    for (long t = 0; t < ticks; t++) {
        if (t % 2)
            raise(SIGUSR1);
        else
            kill(getpid(), SIGUSR1);

        sigset_t cur, pend;
        struct sigaction q, hup;
        sigprocmask(SIG_BLOCK, NULL, &cur);
        sigpending(&pend);
        sigaction(SIGUSR1, NULL, &q);
        sigaction(SIGHUP, NULL, &hup);
        int handler_ok = q.sa_handler == on_usr1 && (q.sa_flags & SA_RESTART) &&
                         sigismember(&q.sa_mask, SIGTERM) && !sigismember(&q.sa_mask, SIGINT);
        unsigned long mask;
        memcpy(&mask, &cur, sizeof mask);
        printf("tick %ld pid=%d usr1=%d handler_ok=%d flags=%08x hup_ign=%d usr2_blocked=%d "
               "usr2_pending=%d mask=%016lx\n",
               t, getpid(), (int)usr1_count, handler_ok, (unsigned)q.sa_flags,
               hup.sa_handler == SIG_IGN, sigismember(&cur, SIGUSR2), sigismember(&pend, SIGUSR2),
               mask);
        sleep_ms(TICK_MS);
    }
    return 0;
}
