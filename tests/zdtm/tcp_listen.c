/*
 * tcp_listen - TCP listening sockets, IPv4 and IPv6: address and port, backlog, options
 * (SO_REUSEADDR, SO_REUSEPORT, TCP_NODELAY, SO_KEEPALIVE with TCP_KEEPIDLE/INTVL/CNT,
 * SO_RCVBUF, IPV6_V6ONLY) and O_NONBLOCK; plus a TCP socket bound and not listening and
 * one never bound. After restore each listener has its address and options and accepts
 * connections; the bound socket still holds its port and can listen.
 */
#define _GNU_SOURCE
#include "inet.h"

static int check_listener(int fd, const sock_addr *at, const char *name, int nonblocking)
{
    sock_addr now = addr_of(fd, 0);
    if (!same_addr(&now, at)) {
        FAILED("%s: bound elsewhere after restore", name);
        return -1;
    }
    if (int_opt(fd, SOL_SOCKET, SO_ACCEPTCONN) != 1)
        FAILED("%s: not listening", name);
    if (((fcntl(fd, F_GETFL) & O_NONBLOCK) != 0) != nonblocking)
        FAILED("%s: O_NONBLOCK changed", name);
    int c = socket(at->sa.sa_family, SOCK_STREAM, 0);
    if (c < 0 || connect(c, &at->sa, addr_len(at))) {
        FAILED("%s: connect: %s", name, strerror(errno));
        return -1;
    }
    if (wait_readable(fd)) {
        FAILED("%s: no connection to accept", name);
        return -1;
    }
    int a = accept(fd, NULL, NULL);
    if (a < 0 || write_full(c, "hi", 2) || recv_full(a, (char[2]){0}, 2))
        FAILED("%s: accept/echo: %s", name, strerror(errno));
    close(a);
    close(c);
    return 0;
}

int main(void)
{
    start();
    sock_addr at4, at6, bound_at;
    int l4 = tcp_listener(AF_INET, 5, &at4);
    int l6 = socket(AF_INET6, SOCK_STREAM, 0);
    int one = 1, idle = 77, intvl = 11, cnt = 5, rcvbuf = 300000;
    at6 = loopback(AF_INET6);
    if (l4 < 0 || l6 < 0 || setsockopt(l6, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) ||
        setsockopt(l6, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) ||
        setsockopt(l6, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) ||
        bind(l6, &at6.sa, addr_len(&at6)) || listen(l6, 3)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        return 1;
    }
    at6 = addr_of(l6, 0);
    if (setsockopt(l4, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) ||
        setsockopt(l4, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one) ||
        setsockopt(l4, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle) ||
        setsockopt(l4, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl) ||
        setsockopt(l4, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt) ||
        fcntl(l4, F_SETFL, O_NONBLOCK)) {
        printf("FAIL options: %s\n", strerror(errno));
        return 1;
    }
    int rcv_before = int_opt(l6, SOL_SOCKET, SO_RCVBUF);
    int bound = socket(AF_INET, SOCK_STREAM, 0);
    bound_at = loopback(AF_INET);
    if (bound < 0 || bind(bound, &bound_at.sa, addr_len(&bound_at))) {
        printf("FAIL bound socket: %s\n", strerror(errno));
        return 1;
    }
    bound_at = addr_of(bound, 0);
    int fresh = socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fresh < 0) {
        printf("FAIL socket: %s\n", strerror(errno));
        return 1;
    }
    ready_then_wait();

    if (int_opt(l4, IPPROTO_TCP, TCP_NODELAY) != 1 || int_opt(l4, SOL_SOCKET, SO_KEEPALIVE) != 1 ||
        int_opt(l4, SOL_SOCKET, SO_REUSEADDR) != 1)
        FAILED("IPv4 listener: options lost");
    if (int_opt(l4, IPPROTO_TCP, TCP_KEEPIDLE) != idle ||
        int_opt(l4, IPPROTO_TCP, TCP_KEEPINTVL) != intvl ||
        int_opt(l4, IPPROTO_TCP, TCP_KEEPCNT) != cnt)
        FAILED("IPv4 listener: keepalive timing lost");
    if (int_opt(l6, IPPROTO_IPV6, IPV6_V6ONLY) != 1 || int_opt(l6, SOL_SOCKET, SO_REUSEPORT) != 1)
        FAILED("IPv6 listener: options lost");
    if (int_opt(l6, SOL_SOCKET, SO_RCVBUF) != rcv_before)
        FAILED("IPv6 listener: SO_RCVBUF %d, was %d", int_opt(l6, SOL_SOCKET, SO_RCVBUF),
               rcv_before);
    check_listener(l4, &at4, "IPv4 listener", 1);
    check_listener(l6, &at6, "IPv6 listener", 0);
    sock_addr b = addr_of(bound, 0);
    if (!same_addr(&b, &bound_at))
        FAILED("bound socket: bound elsewhere after restore");
    else if (listen(bound, 1))
        FAILED("bound socket: listen: %s", strerror(errno));
    else
        check_listener(bound, &bound_at, "bound socket", 0);
    if (!(fcntl(fresh, F_GETFL) & O_NONBLOCK) || int_opt(fresh, SOL_SOCKET, SO_DOMAIN) != AF_INET6 ||
        int_opt(fresh, SOL_SOCKET, SO_TYPE) != SOCK_STREAM)
        FAILED("new socket: not the IPv6 nonblocking TCP socket it was");
    return verdict();
}
