/*
 * tcp_options - TCP and IP options beyond the common ones: on an IPv4 listener
 * TCP_DEFER_ACCEPT, TCP_FASTOPEN (its queue), IP_TOS and IP_TTL; on an IPv6 listener
 * IPV6_TCLASS; on an established IPv4 connection (both ends here) TCP_CORK,
 * TCP_USER_TIMEOUT and TCP_CONGESTION ("reno", built into every kernel). After restore
 * every option reads back as it was, and the connection carries data once uncorked.
 */
#define _GNU_SOURCE
#include "inet.h"

static int congestion_is(int fd, const char *want)
{
    char name[16] = {0};
    socklen_t len = sizeof name;
    return getsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, name, &len) == 0 && strcmp(name, want) == 0;
}

int main(void)
{
    start();
    sock_addr at4, at6, atc;
    int l4 = tcp_listener(AF_INET, 4, &at4);
    int l6 = tcp_listener(AF_INET6, 4, &at6);
    int lc = tcp_listener(AF_INET, 1, &atc);
    int defer = 5, queue = 16, tos = 0x10, ttl = 33, tclass = 0x20, one = 1, timeout = 12345;
    if (l4 < 0 || l6 < 0 || lc < 0 ||
        setsockopt(l4, IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer, sizeof defer) ||
        setsockopt(l4, IPPROTO_TCP, TCP_FASTOPEN, &queue, sizeof queue) ||
        setsockopt(l4, IPPROTO_IP, IP_TOS, &tos, sizeof tos) ||
        setsockopt(l4, IPPROTO_IP, IP_TTL, &ttl, sizeof ttl) ||
        setsockopt(l6, IPPROTO_IPV6, IPV6_TCLASS, &tclass, sizeof tclass)) {
        printf("FAIL listener options: %s\n", strerror(errno));
        return 1;
    }
    /* The kernel keeps the deferral as a number of retransmissions: read it back. */
    int defer_now = int_opt(l4, IPPROTO_TCP, TCP_DEFER_ACCEPT);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (c < 0 || connect(c, &atc.sa, addr_len(&atc))) {
        printf("FAIL connect: %s\n", strerror(errno));
        return 1;
    }
    int s = accept(lc, NULL, NULL);
    if (s < 0 || setsockopt(c, IPPROTO_TCP, TCP_CORK, &one, sizeof one) ||
        setsockopt(c, IPPROTO_TCP, TCP_USER_TIMEOUT, &timeout, sizeof timeout) ||
        setsockopt(c, IPPROTO_TCP, TCP_CONGESTION, "reno", 4)) {
        printf("FAIL connection options: %s\n", strerror(errno));
        return 1;
    }
    ready_then_wait();

    if (int_opt(l4, IPPROTO_TCP, TCP_DEFER_ACCEPT) != defer_now)
        FAILED("TCP_DEFER_ACCEPT %d, was %d", int_opt(l4, IPPROTO_TCP, TCP_DEFER_ACCEPT), defer_now);
    if (int_opt(l4, IPPROTO_TCP, TCP_FASTOPEN) != queue)
        FAILED("TCP_FASTOPEN %d, was %d", int_opt(l4, IPPROTO_TCP, TCP_FASTOPEN), queue);
    if (int_opt(l4, IPPROTO_IP, IP_TOS) != tos || int_opt(l4, IPPROTO_IP, IP_TTL) != ttl)
        FAILED("IP_TOS %d / IP_TTL %d, were %d / %d", int_opt(l4, IPPROTO_IP, IP_TOS),
               int_opt(l4, IPPROTO_IP, IP_TTL), tos, ttl);
    if (int_opt(l6, IPPROTO_IPV6, IPV6_TCLASS) != tclass)
        FAILED("IPV6_TCLASS %d, was %d", int_opt(l6, IPPROTO_IPV6, IPV6_TCLASS), tclass);
    if (int_opt(c, IPPROTO_TCP, TCP_CORK) != 1)
        FAILED("TCP_CORK lost");
    if (int_opt(c, IPPROTO_TCP, TCP_USER_TIMEOUT) != timeout)
        FAILED("TCP_USER_TIMEOUT %d, was %d", int_opt(c, IPPROTO_TCP, TCP_USER_TIMEOUT), timeout);
    if (!congestion_is(c, "reno"))
        FAILED("TCP_CONGESTION is not reno");
    int zero = 0;
    char got[4];
    if (write_full(c, "ping", 4) || setsockopt(c, IPPROTO_TCP, TCP_CORK, &zero, sizeof zero) ||
        wait_readable(s) || recv_full(s, got, 4) || memcmp(got, "ping", 4))
        FAILED("the connection does not carry data: %s", strerror(errno));
    return verdict();
}
