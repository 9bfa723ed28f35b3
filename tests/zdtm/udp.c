/*
 * udp - UDP sockets, IPv4 and IPv6, with datagrams waiting to be read at checkpoint time:
 * `a` (bound, SO_BROADCAST) and `b` (bound, connected to `a`, nonblocking) hold 3 and 2
 * datagrams from each other (one of them empty); IPv6 `c` holds one from `d`. After
 * restore each reads its datagrams, in order, from the right senders; addresses, the
 * connection, options and flags are as they were, and they still exchange datagrams.
 */
#define _GNU_SOURCE
#include "inet.h"

static int udp_socket(int family, sock_addr *at)
{
    *at = loopback(family);
    int fd = socket(family, SOCK_DGRAM, 0);
    if (fd < 0 || bind(fd, &at->sa, addr_len(at)))
        return -1;
    *at = addr_of(fd, 0);
    return fd;
}

/* Receives one datagram on `fd` and compares it with `want` and its sender with `from`. */
static void expect(int fd, const char *want, const sock_addr *from, const char *name)
{
    char buf[64];
    sock_addr src;
    socklen_t len = sizeof src;
    if (wait_readable(fd)) {
        FAILED("%s: datagram '%s' missing", name, want);
        return;
    }
    ssize_t n = recvfrom(fd, buf, sizeof buf, 0, &src.sa, &len);
    if (n != (ssize_t)strlen(want) || memcmp(buf, want, (size_t)n))
        FAILED("%s: got %zd bytes instead of '%s'", name, n, want);
    else if (!same_addr(&src, from))
        FAILED("%s: datagram '%s' from another sender", name, want);
}

int main(void)
{
    start();
    sock_addr at_a, at_b, at_c, at_d;
    int a = udp_socket(AF_INET, &at_a), b = udp_socket(AF_INET, &at_b);
    int c = udp_socket(AF_INET6, &at_c), d = udp_socket(AF_INET6, &at_d), one = 1;
    if (a < 0 || b < 0 || c < 0 || d < 0 || connect(b, &at_a.sa, addr_len(&at_a)) ||
        setsockopt(a, SOL_SOCKET, SO_BROADCAST, &one, sizeof one) ||
        fcntl(b, F_SETFL, O_NONBLOCK)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        return 1;
    }
    const char *to_b[] = {"one", "", "three"};
    for (int i = 0; i < 3; i++)
        sendto(a, to_b[i], strlen(to_b[i]), 0, &at_b.sa, addr_len(&at_b));
    send(b, "four", 4, 0);
    send(b, "five", 4, 0);
    sendto(d, "six", 3, 0, &at_c.sa, addr_len(&at_c));
    struct timespec settle = {0, 50 * 1000 * 1000};
    nanosleep(&settle, NULL);
    ready_then_wait();

    for (int i = 0; i < 3; i++)
        expect(b, to_b[i], &at_a, "b");
    expect(a, "four", &at_b, "a");
    expect(a, "five", &at_b, "a");
    expect(c, "six", &at_d, "c");
    sock_addr now_a = addr_of(a, 0), now_b = addr_of(b, 0), peer_b = addr_of(b, 1);
    if (!same_addr(&now_a, &at_a) || !same_addr(&now_b, &at_b) || !same_addr(&peer_b, &at_a))
        FAILED("addresses or b's connection changed");
    if (int_opt(a, SOL_SOCKET, SO_BROADCAST) != 1 || !(fcntl(b, F_GETFL) & O_NONBLOCK))
        FAILED("SO_BROADCAST or O_NONBLOCK lost");
    if (send(b, "again", 5, 0) != 5)
        FAILED("b cannot send: %s", strerror(errno));
    expect(a, "again", &at_b, "a after restore");
    sendto(d, "more", 4, 0, &at_c.sa, addr_len(&at_c));
    expect(c, "more", &at_d, "c after restore");
    return verdict();
}
