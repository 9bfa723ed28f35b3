/*
 * epoll - an epoll (EPOLL_CLOEXEC) watching a pipe's read end with data queued (EPOLLIN), a
 * socketpair end (EPOLLOUT|EPOLLET) and an eventfd with a count (EPOLLIN|EPOLLONESHOT), each
 * with its own 64-bit user data; an outer epoll watching it and an idle epoll (nested). No
 * epoll_wait runs before the checkpoint, so every registration is still armed.
 *
 * After restore: the `tfd:` lines of both epolls' fdinfo (fd, events, data; sorted by fd)
 * are the ones saved before `ready`; the outer epoll reports exactly the main epoll
 * readable, with its data; the main epoll reports exactly the three fds with their data and
 * events; a second wait reports only the level-triggered pipe (the edge was taken, the
 * one-shot disarmed); the pipe still holds its data.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "zdtm.h"
#include "fdinfo.h"

#define PIPE_DATA 0x1111222233334444ULL
#define SOCK_DATA 0xfeedfacecafebeefULL
#define EVENT_DATA 0x0123456789abcdefULL
#define MAIN_DATA 0x5555666677778888ULL
#define IDLE_DATA 0x9999aaaabbbbccccULL
#define MESSAGE "queued before the checkpoint"
#define MAX_TFDS 8

struct tfd {
    int fd;
    unsigned events;
    unsigned long long data;
};

static int cmp_tfd(const void *a, const void *b)
{
    return ((const struct tfd *)a)->fd - ((const struct tfd *)b)->fd;
}

/* The `tfd:` entries of an epoll's fdinfo, sorted by fd (the kernel's order follows
 * struct file addresses, which a restore changes); their count, or -1. */
static int tfds_of(int ep, struct tfd *out)
{
    char buf[FDINFO_MAX];
    if (fdinfo_text(ep, buf, sizeof buf))
        return -1;
    int n = 0;
    for (char *p = strstr(buf, "tfd:"); p && n < MAX_TFDS; p = strstr(p + 1, "tfd:")) {
        if (sscanf(p, "tfd: %d events: %x data: %llx", &out[n].fd, &out[n].events,
                   &out[n].data) != 3)
            return -1;
        n++;
    }
    qsort(out, (size_t)n, sizeof *out, cmp_tfd);
    return n;
}

static void compare_tfds(const char *name, int ep, const struct tfd *was, int nwas)
{
    struct tfd now[MAX_TFDS];
    int n = tfds_of(ep, now);
    if (n != nwas) {
        FAILED("%s: %d tfd entries in fdinfo, expected %d", name, n, nwas);
        return;
    }
    for (int i = 0; i < n; i++)
        if (now[i].fd != was[i].fd || now[i].events != was[i].events ||
            now[i].data != was[i].data)
            FAILED("%s: tfd entry %d is fd %d events %x data %llx, expected fd %d events %x "
                   "data %llx",
                   name, i, now[i].fd, now[i].events, now[i].data, was[i].fd, was[i].events,
                   was[i].data);
}

struct expect {
    uint64_t data;
    uint32_t events;
    const char *what;
};

/* epoll_wait(ep, timeout 0) must report exactly `want` (in any order). */
static void expect_ready(const char *step, int ep, const struct expect *want, int nwant)
{
    struct epoll_event got[8];
    int n = epoll_wait(ep, got, 8, 0);
    if (n < 0) {
        FAILED("%s: epoll_wait: %s", step, strerror(errno));
        return;
    }
    int seen[8] = {0};
    for (int i = 0; i < n; i++) {
        int match = -1;
        for (int j = 0; j < nwant; j++)
            if (got[i].data.u64 == want[j].data)
                match = j;
        if (match < 0) {
            FAILED("%s: unexpected event data %" PRIx64 " events %x", step, got[i].data.u64,
                   got[i].events);
            return;
        }
        if (seen[match]++)
            FAILED("%s: %s reported twice", step, want[match].what);
        if (got[i].events != want[match].events)
            FAILED("%s: %s events %x, expected %x", step, want[match].what, got[i].events,
                   want[match].events);
    }
    for (int j = 0; j < nwant; j++)
        if (!seen[j])
            FAILED("%s: %s not reported ready (%d events)", step, want[j].what, n);
}

static int add(int ep, int fd, uint32_t events, uint64_t data)
{
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = events;
    ev.data.u64 = data;
    return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

int main(void)
{
    start();
    int p[2], s[2];
    int efd = eventfd(3, EFD_NONBLOCK);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    int outer = epoll_create1(0);
    int idle = epoll_create1(0);
    if (pipe(p) || socketpair(AF_UNIX, SOCK_STREAM, 0, s) || efd < 0 || ep < 0 ||
        outer < 0 || idle < 0 || write_full(p[1], MESSAGE, sizeof MESSAGE) ||
        add(ep, p[0], EPOLLIN, PIPE_DATA) || add(ep, s[0], EPOLLOUT | EPOLLET, SOCK_DATA) ||
        add(ep, efd, EPOLLIN | EPOLLONESHOT, EVENT_DATA) || add(outer, ep, EPOLLIN, MAIN_DATA) ||
        add(outer, idle, EPOLLIN, IDLE_DATA)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        return 1;
    }
    struct tfd main_was[MAX_TFDS], outer_was[MAX_TFDS];
    int main_n = tfds_of(ep, main_was), outer_n = tfds_of(outer, outer_was);
    if (main_n != 3 || outer_n != 2) {
        printf("FAIL set-up: fdinfo shows %d and %d tfd entries, expected 3 and 2\n", main_n,
               outer_n);
        return 1;
    }
    struct fd_flags ep_flags = fd_flags_of(ep), outer_flags = fd_flags_of(outer);
    ready_then_wait();

    CHECK_FD_FLAGS("main epoll", ep, ep_flags);
    CHECK_FD_FLAGS("outer epoll", outer, outer_flags);
    if (fd_flags_of(ep).fd != FD_CLOEXEC)
        FAILED("main epoll lost EPOLL_CLOEXEC");
    compare_tfds("main epoll", ep, main_was, main_n);
    compare_tfds("outer epoll", outer, outer_was, outer_n);

    const struct expect outer_ready[] = {{MAIN_DATA, EPOLLIN, "main epoll (in outer)"}};
    expect_ready("outer wait", outer, outer_ready, 1);
    const struct expect all[] = {
        {PIPE_DATA, EPOLLIN, "pipe"},
        {SOCK_DATA, EPOLLOUT, "socket"},
        {EVENT_DATA, EPOLLIN, "eventfd"},
    };
    expect_ready("first wait", ep, all, 3);
    expect_ready("second wait", ep, all, 1);

    char buf[sizeof MESSAGE];
    if (read_full(p[0], buf, sizeof buf) || memcmp(buf, MESSAGE, sizeof buf))
        FAILED("pipe data lost or changed");
    uint64_t count = 0;
    if (read(efd, &count, sizeof count) != sizeof count || count != 3)
        FAILED("eventfd count %llu, expected 3", (unsigned long long)count);
    /* The pipe is empty now: nothing is ready and the outer epoll is quiet too. */
    expect_ready("after draining", ep, all, 0);
    expect_ready("outer after draining", outer, outer_ready, 0);
    return verdict();
}
