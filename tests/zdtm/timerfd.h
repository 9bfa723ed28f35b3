/* timerfd.h - nanosecond arithmetic and reads shared by timerfd.c and timerfd_late.c. */
#ifndef MLCKPT_TIMERFD_H
#define MLCKPT_TIMERFD_H

#include <errno.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#define MS 1000000LL
#define SEC 1000000000LL

__attribute__((unused)) static long long ns_of(struct timespec t)
{
    return t.tv_sec * SEC + t.tv_nsec;
}

__attribute__((unused)) static struct timespec ts_of(long long ns)
{
    struct timespec t = {ns / SEC, ns % SEC};
    return t;
}

__attribute__((unused)) static long long now(clockid_t clock)
{
    struct timespec t;
    clock_gettime(clock, &t);
    return ns_of(t);
}

/* One read() of a timerfd: the expiration count, or -errno. */
__attribute__((unused)) static long long read_count(int fd)
{
    uint64_t n;
    ssize_t r = read(fd, &n, sizeof n);
    if (r < 0)
        return -errno;
    return r == sizeof n ? (long long)n : -EIO;
}

#endif
