/*
 * inet.h - helpers of the TCP and UDP conformance programs: a listener on the loopback
 * (IPv4 or IPv6, port chosen by the kernel), reads that wait on nonblocking sockets, the
 * byte pattern the programs send, and address comparison.
 */
#ifndef MLCKPT_INET_H
#define MLCKPT_INET_H

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include "zdtm.h"

typedef union {
    struct sockaddr sa;
    struct sockaddr_in in4;
    struct sockaddr_in6 in6;
    struct sockaddr_storage ss;
} sock_addr;

/* The loopback of `family`, port 0 (the kernel picks). */
__attribute__((unused)) static sock_addr loopback(int family)
{
    sock_addr a;
    memset(&a, 0, sizeof a);
    if (family == AF_INET6) {
        a.in6.sin6_family = AF_INET6;
        a.in6.sin6_addr = in6addr_loopback;
    } else {
        a.in4.sin_family = AF_INET;
        a.in4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    }
    return a;
}

__attribute__((unused)) static socklen_t addr_len(const sock_addr *a)
{
    return a->sa.sa_family == AF_INET6 ? sizeof a->in6 : sizeof a->in4;
}

__attribute__((unused)) static int same_addr(const sock_addr *a, const sock_addr *b)
{
    if (a->sa.sa_family != b->sa.sa_family)
        return 0;
    if (a->sa.sa_family == AF_INET6)
        return a->in6.sin6_port == b->in6.sin6_port &&
               !memcmp(&a->in6.sin6_addr, &b->in6.sin6_addr, sizeof a->in6.sin6_addr);
    return a->in4.sin_port == b->in4.sin_port && a->in4.sin_addr.s_addr == b->in4.sin_addr.s_addr;
}

/* getsockname (peer = 0) or getpeername (peer = 1). */
__attribute__((unused)) static sock_addr addr_of(int fd, int peer)
{
    sock_addr a;
    memset(&a, 0, sizeof a);
    socklen_t len = sizeof a;
    if (peer)
        getpeername(fd, &a.sa, &len);
    else
        getsockname(fd, &a.sa, &len);
    return a;
}

/* A TCP listener on the loopback of `family`; its address in *at. */
__attribute__((unused)) static int tcp_listener(int family, int backlog, sock_addr *at)
{
    *at = loopback(family);
    int fd = socket(family, SOCK_STREAM, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
        bind(fd, &at->sa, addr_len(at)) || listen(fd, backlog))
        return -1;
    *at = addr_of(fd, 0);
    return fd;
}

/* Waits up to 5 s for `fd` to be readable. */
__attribute__((unused)) static int wait_readable(int fd)
{
    struct pollfd p = {fd, POLLIN, 0};
    return poll(&p, 1, 5000) == 1 ? 0 : -1;
}

/* read_full for a socket that may be nonblocking. */
__attribute__((unused)) static int recv_full(int fd, void *buf, size_t n)
{
    size_t done = 0;
    while (done < n) {
        if (wait_readable(fd))
            return -1;
        ssize_t r = read(fd, (char *)buf + done, n - done);
        if (r < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (r <= 0)
            return -1;
        done += (size_t)r;
    }
    return 0;
}

/* The bytes stream `k` sends. */
__attribute__((unused)) static void pattern(unsigned char *buf, size_t n, int k)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = (unsigned char)(k * 31 + i * 7 + (i >> 9));
}

/* Reads `n` bytes of stream `k` and compares: 0, -1 missing, -2 different. */
__attribute__((unused)) static int expect_stream(int fd, size_t n, int k)
{
    unsigned char *got = malloc(n), *want = malloc(n);
    int rc = 0;
    if (!got || !want || recv_full(fd, got, n))
        rc = -1;
    else {
        pattern(want, n, k);
        rc = memcmp(got, want, n) ? -2 : 0;
    }
    free(got);
    free(want);
    return rc;
}

__attribute__((unused)) static int int_opt(int fd, int level, int name)
{
    int v = -1;
    socklen_t len = sizeof v;
    if (getsockopt(fd, level, name, &v, &len))
        return -1;
    return v;
}

#endif
