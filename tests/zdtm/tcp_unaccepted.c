/*
 * tcp_unaccepted - connections of the job waiting in its own listeners' accept queues at
 * checkpoint time, nothing sent on them yet: an IPv4 one (the connecting end nonblocking)
 * and an IPv6 one. After restore each listener accepts a connection from the very address
 * and port the job's end had, and both carry data both ways.
 */
#define _GNU_SOURCE
#include "inet.h"

static void check(int l, int c, const sock_addr *was, const char *name)
{
    sock_addr now = addr_of(c, 0);
    if (!same_addr(&now, was)) {
        FAILED("%s: the connecting end has another address", name);
        return;
    }
    if (wait_readable(l)) {
        FAILED("%s: nothing to accept", name);
        return;
    }
    sock_addr from;
    socklen_t len = sizeof from;
    int s = accept(l, &from.sa, &len);
    if (s < 0) {
        FAILED("%s: accept: %s", name, strerror(errno));
        return;
    }
    if (!same_addr(&from, was))
        FAILED("%s: accepted a connection from another address", name);
    char buf[4];
    if (write_full(c, "ping", 4) || recv_full(s, buf, 4) || memcmp(buf, "ping", 4) ||
        write_full(s, "pong", 4) || recv_full(c, buf, 4) || memcmp(buf, "pong", 4))
        FAILED("%s: no exchange: %s", name, strerror(errno));
    close(s);
}

int main(void)
{
    start();
    sock_addr at4, at6;
    int l4 = tcp_listener(AF_INET, 4, &at4), l6 = tcp_listener(AF_INET6, 4, &at6);
    int c4 = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), c6 = socket(AF_INET6, SOCK_STREAM, 0);
    if (l4 < 0 || l6 < 0 || c4 < 0 || c6 < 0 ||
        (connect(c4, &at4.sa, addr_len(&at4)) && errno != EINPROGRESS) ||
        connect(c6, &at6.sa, addr_len(&at6))) {
        printf("FAIL set-up: %s\n", strerror(errno));
        return 1;
    }
    struct pollfd p = {c4, POLLOUT, 0};
    if (poll(&p, 1, 5000) != 1) {
        printf("FAIL connect: timeout\n");
        return 1;
    }
    sock_addr was4 = addr_of(c4, 0), was6 = addr_of(c6, 0);
    ready_then_wait();

    if (!(fcntl(c4, F_GETFL) & O_NONBLOCK))
        FAILED("IPv4: O_NONBLOCK lost");
    check(l4, c4, &was4, "IPv4");
    check(l6, c6, &was6, "IPv6");
    return verdict();
}
