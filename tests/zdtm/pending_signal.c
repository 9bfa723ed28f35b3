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

static volatile sig_atomic_t got_usr2;
static void on_usr2(int sig) { (void)sig; got_usr2 = 1; }

/* Line-buffered stdout, the SIGUSR2 handler, and the first line `pid <N>`. */
static void start(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr2;
    sigaction(SIGUSR2, &sa, NULL);
    printf("pid %d\n", (int)getpid());
}

/* Prints `ready`, then waits (across a checkpoint and restore) for SIGUSR2. */
static void ready_then_wait(void)
{
    printf("ready\n");
    while (!got_usr2) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

static char fail_msg[512];

/* Records the first failure. */
#define FAILED(...)                                                     \
    do {                                                                \
        if (!fail_msg[0])                                               \
            snprintf(fail_msg, sizeof fail_msg, __VA_ARGS__);           \
    } while (0)

/* Prints the verdict; the exit status of main. */
static int verdict(void)
{
    if (fail_msg[0]) {
        printf("FAIL %s\n", fail_msg);
        return 1;
    }
    printf("PASS\n");
    return 0;
}

__attribute__((unused)) static int write_full(int fd, const void *buf, size_t n)
{
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, (const char *)buf + done, n - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        done += (size_t)w;
    }
    return 0;
}

__attribute__((unused)) static int read_full(int fd, void *buf, size_t n)
{
    size_t done = 0;
    while (done < n) {
        ssize_t r = read(fd, (char *)buf + done, n - done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        done += (size_t)r;
    }
    return 0;
}

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
