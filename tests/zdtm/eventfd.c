/*
 * eventfd - three eventfds: a semaphore one (EFD_SEMAPHORE|EFD_NONBLOCK, counter 5), a plain
 * blocking one (counter 123456789) and one shared with a child (EFD_NONBLOCK|EFD_CLOEXEC,
 * counter 1000). After restore: fcntl flags and the fdinfo lines `flags:`,
 * `eventfd-count:` and `eventfd-semaphore:` (when the kernel has it) are as before; the
 * semaphore reads 1 five times then EAGAIN; the plain one reads 123456789 and is then
 * empty; the child adds 7 to the shared one after restore and the parent reads 1007 (one
 * object in both processes, not two copies).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "zdtm.h"
#include "fdinfo.h"

#define NFDS 3

static const char *const names[NFDS] = {"semaphore eventfd", "plain eventfd",
                                         "shared eventfd"};
/* fdinfo lines whose values must survive (eventfd-id is a kernel-wide counter: not these). */
static const char *const keys[] = {"flags:", "eventfd-count:", "eventfd-semaphore:"};
#define NKEYS (sizeof keys / sizeof keys[0])

struct saved {
    struct fd_flags flags;
    int present[NKEYS];
    char value[NKEYS][64];
};

static void save(int fd, struct saved *s)
{
    s->flags = fd_flags_of(fd);
    for (size_t k = 0; k < NKEYS; k++)
        s->present[k] = fdinfo_value(fd, keys[k], s->value[k], sizeof s->value[k]);
}

static void compare(const char *name, int fd, const struct saved *was)
{
    CHECK_FD_FLAGS(name, fd, was->flags);
    for (size_t k = 0; k < NKEYS; k++) {
        char now[64] = "";
        int present = fdinfo_value(fd, keys[k], now, sizeof now);
        if (present != was->present[k] || (present == 1 && strcmp(now, was->value[k])))
            FAILED("%s: fdinfo `%s` is %s%s, was %s%s", name, keys[k],
                   present == 1 ? "" : "absent ", now, was->present[k] == 1 ? "" : "absent ",
                   was->value[k]);
    }
}

/* One read of an eventfd: the value, or -errno. */
static int64_t read_counter(int fd)
{
    uint64_t v;
    ssize_t r = read(fd, &v, sizeof v);
    if (r < 0)
        return -errno;
    if (r != sizeof v)
        return -EIO;
    return (int64_t)v;
}

static int readable(int fd)
{
    struct pollfd p = {fd, POLLIN, 0};
    return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

int main(void)
{
    start();
    int fds[NFDS] = {
        eventfd(5, EFD_SEMAPHORE | EFD_NONBLOCK),
        eventfd(123456789, 0),
        eventfd(1000, EFD_NONBLOCK | EFD_CLOEXEC),
    };
    for (int i = 0; i < NFDS; i++)
        if (fds[i] < 0) {
            printf("FAIL eventfd: %s\n", strerror(errno));
            return 1;
        }
    struct saved was[NFDS];
    for (int i = 0; i < NFDS; i++)
        save(fds[i], &was[i]);
    if (strcmp(was[0].value[1], "5") || strcmp(was[1].value[1], "75bcd15")) {
        printf("FAIL set-up: eventfd-count `%s` and `%s`, expected 5 and 75bcd15\n",
               was[0].value[1], was[1].value[1]);
        return 1;
    }

    pid_t child = fork_or_fail();
    if (child == 0) {
        /* SIGUSR2 from the parent (after restore): add 7 to the shared counter. */
        while (!got_usr2) {
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        uint64_t seven = 7;
        _exit(write(fds[2], &seven, sizeof seven) == sizeof seven ? 0 : 3);
    }
    ready_then_wait();

    for (int i = 0; i < NFDS; i++)
        compare(names[i], fds[i], &was[i]);

    for (int i = 0; i < 5; i++) {
        int64_t v = read_counter(fds[0]);
        if (v != 1)
            FAILED("semaphore read %d gave %lld, expected 1", i + 1, (long long)v);
    }
    int64_t v = read_counter(fds[0]);
    if (v != -EAGAIN)
        FAILED("semaphore read 6 gave %lld, expected -EAGAIN (%d)", (long long)v, -EAGAIN);

    if (!readable(fds[1]))
        FAILED("plain eventfd is not readable");
    else if ((v = read_counter(fds[1])) != 123456789)
        FAILED("plain eventfd read %lld, expected 123456789", (long long)v);
    if (readable(fds[1]))
        FAILED("plain eventfd still readable after its counter was read");

    if (kill(child, SIGUSR2))
        FAILED("kill child: %s", strerror(errno));
    reap_child(child);
    if ((v = read_counter(fds[2])) != 1007)
        FAILED("shared eventfd read %lld after the child's write of 7, expected 1007",
               (long long)v);
    if ((v = read_counter(fds[2])) != -EAGAIN)
        FAILED("shared eventfd second read gave %lld, expected -EAGAIN", (long long)v);
    return verdict();
}
