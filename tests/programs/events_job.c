/*
 * events_job.c - exercises: timerfd, eventfd, signalfd and epoll working together, with
 * state kept in the kernel objects across ticks (so across a checkpoint).
 *
 * An epoll watches a 50 ms interval timerfd (level-triggered), an eventfd and a signalfd for
 * SIGUSR1 (blocked), the last two with EPOLLONESHOT. Every timer expiry is one tick (the
 * number of expirations read is not used: a restore may deliver several at once):
 *   - the tick adds (t % 7 + 1) to the eventfd; every 5th tick reads the eventfd (the sum of
 *     5 ticks' adds, held in the kernel until then) into `sum` and re-arms its one-shot;
 *   - at t % 10 == 3 the program sends itself SIGUSR1 (it stays pending in the signalfd);
 *     at t % 10 == 0 it reads it from the signalfd and re-arms the one-shot;
 *   - each one-shot reports its fd once per arming: `efd_notices` and `sig_notices` count
 *     those reports (a restore that re-arms a disarmed one-shot, or loses an armed one,
 *     changes them);
 *   - a second, slow timerfd (first expiry at 525 ms, then every second: half-way between
 *     two ticks, ten ticks before each read) is read only at t % 20 == 0, without waiting:
 *     between its expiry and that read it is a periodic timer the kernel has expired and
 *     not re-armed yet, the state a checkpoint usually finds it in. Every read must find at
 *     least one expiration (`slow=` counts the reads that did), so a restore that turns it
 *     into a disarmed timer shows.
 *
 * Usage:  events_job <ticks>
 * Output: "pid <pid>"
 *         "tick <i> pid=<pid> sum=<n> efd_notices=<n> sigs=<n> sig_notices=<n> slow=<n>"
 *         "done ticks=<n> sum=<n> sigs=<n>"
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#define TICK_NS 50000000L
#define SLOW_FIRST_NS 525000000L
/* Longest wait for any event: the timer ticks every 50 ms. */
#define SILENCE_MS 5000

enum { TIMER = 1, COUNTER, SIGNALS };

static void die(const char *what)
{
    printf("ERROR %s: %s\n", what, strerror(errno));
    exit(1);
}

static void arm(int ep, int op, int fd, uint32_t events, uint64_t data)
{
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = events;
    ev.data.u64 = data;
    if (epoll_ctl(ep, op, fd, &ev))
        die("epoll_ctl");
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2) {
        fprintf(stderr, "usage: events_job <ticks>\n");
        return 2;
    }
    long ticks = strtol(argv[1], NULL, 10);
    printf("pid %d\n", (int)getpid());

    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    if (sigprocmask(SIG_BLOCK, &usr1, NULL))
        die("sigprocmask");
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    int slow = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    int sfd = signalfd(-1, &usr1, SFD_NONBLOCK | SFD_CLOEXEC);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (tfd < 0 || slow < 0 || efd < 0 || sfd < 0 || ep < 0)
        die("create");
    struct itimerspec every = {{0, TICK_NS}, {0, TICK_NS}};
    struct itimerspec every_second = {{1, 0}, {0, SLOW_FIRST_NS}};
    if (timerfd_settime(tfd, 0, &every, NULL) || timerfd_settime(slow, 0, &every_second, NULL))
        die("timerfd_settime");
    arm(ep, EPOLL_CTL_ADD, tfd, EPOLLIN, TIMER);
    arm(ep, EPOLL_CTL_ADD, efd, EPOLLIN | EPOLLONESHOT, COUNTER);
    arm(ep, EPOLL_CTL_ADD, sfd, EPOLLIN | EPOLLONESHOT, SIGNALS);

    uint64_t sum = 0;
    long efd_notices = 0, sigs = 0, sig_notices = 0, slow_reads = 0;
    for (long t = 1; t <= ticks;) {
        struct epoll_event evs[4];
        int n = epoll_wait(ep, evs, 4, SILENCE_MS);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("epoll_wait");
        if (n == 0) {
            printf("ERROR no event for %d ms at tick %ld\n", SILENCE_MS, t);
            return 1;
        }
        int tick = 0;
        for (int i = 0; i < n; i++) {
            if (evs[i].data.u64 == COUNTER)
                efd_notices++;
            else if (evs[i].data.u64 == SIGNALS)
                sig_notices++;
            else if (evs[i].data.u64 == TIMER)
                tick = 1;
        }
        if (!tick)
            continue;
        uint64_t expirations;
        if (read(tfd, &expirations, sizeof expirations) != sizeof expirations ||
            expirations == 0)
            die("read timerfd");

        uint64_t add = (uint64_t)(t % 7 + 1);
        if (write(efd, &add, sizeof add) != sizeof add)
            die("write eventfd");
        if (t % 5 == 0) {
            uint64_t got;
            if (read(efd, &got, sizeof got) != sizeof got)
                die("read eventfd");
            sum += got;
            arm(ep, EPOLL_CTL_MOD, efd, EPOLLIN | EPOLLONESHOT, COUNTER);
        }
        if (t % 10 == 3 && kill(getpid(), SIGUSR1))
            die("kill");
        if (t % 10 == 0) {
            struct signalfd_siginfo si;
            if (read(sfd, &si, sizeof si) != sizeof si)
                die("read signalfd");
            if (si.ssi_signo != SIGUSR1 || (pid_t)si.ssi_pid != getpid()) {
                printf("ERROR signalfd gave signal %u from %u\n", si.ssi_signo, si.ssi_pid);
                return 1;
            }
            sigs++;
            arm(ep, EPOLL_CTL_MOD, sfd, EPOLLIN | EPOLLONESHOT, SIGNALS);
        }
        if (t % 20 == 0) {
            uint64_t n = 0;
            if (read(slow, &n, sizeof n) == sizeof n && n > 0)
                slow_reads++;
        }
        printf("tick %ld pid=%d sum=%llu efd_notices=%ld sigs=%ld sig_notices=%ld slow=%ld\n",
               t, (int)getpid(), (unsigned long long)sum, efd_notices, sigs, sig_notices,
               slow_reads);
        t++;
    }
    printf("done ticks=%ld sum=%llu sigs=%ld\n", ticks, (unsigned long long)sum, sigs);
    return 0;
}
