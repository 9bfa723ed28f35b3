/*
 * objects_job.c - an event-loop job for the benchmark (scripts/bench.sh, ONLY=objects):
 * <fds> eventfds watched by one epoll, a timerfd driving the loop, a signalfd, and a memfd
 * of <mib> MiB mapped shared (the job's state), a few of whose pages change every tick.
 *
 * Usage:  objects_job <fds> <mib>
 * Output: "pid <pid>", then "tick <i> <sum>" every 100 ms, forever.
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
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

static void die(const char *what)
{
    printf("ERROR %s: %s\n", what, strerror(errno));
    exit(1);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    int fds = argc > 1 ? atoi(argv[1]) : 1000;
    size_t len = (size_t)(argc > 2 ? atol(argv[2]) : 256) << 20;
    int ep = epoll_create1(0);
    if (ep < 0)
        die("epoll_create1");
    for (int i = 0; i < fds; i++) {
        int e = eventfd((unsigned)i, EFD_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.u64 = 1000 + (uint64_t)i};
        if (e < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, e, &ev) < 0)
            die("eventfd");
    }
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGUSR1);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK);
    int tfd = timerfd_create(CLOCK_MONOTONIC, 0);
    struct itimerspec its = {{0, 100000000}, {0, 100000000}};
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 1};
    if (sfd < 0 || tfd < 0 || timerfd_settime(tfd, 0, &its, NULL) < 0 ||
        epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev) < 0)
        die("timerfd");
    int mfd = memfd_create("objects-job-state", 0);
    if (mfd < 0 || ftruncate(mfd, (off_t)len) < 0)
        die("memfd");
    uint64_t *state = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    if (state == MAP_FAILED)
        die("mmap");
    size_t words = len / 8, pages = len / 4096;
    for (size_t p = 0; p < pages; p++)
        state[p * 512] = p;
    printf("pid %d\n", getpid());
    uint64_t sum = 0;
    for (long tick = 1;; tick++) {
        struct epoll_event out[64];
        int n = epoll_wait(ep, out, 64, -1);
        if (n < 0 && errno == EINTR)
            continue;
        for (int i = 0; i < n; i++) {
            if (out[i].data.u64 != 1)
                continue;
            uint64_t expirations;
            if (read(tfd, &expirations, 8) != 8)
                die("read timerfd");
            for (size_t k = 0; k < 64; k++) {
                size_t w = ((size_t)tick * 7919 + k * 104729) % words;
                state[w] += k;
                sum += state[w];
            }
            printf("tick %ld %llu\n", tick, (unsigned long long)sum);
        }
    }
}
