/*
 * udp_multicast - multicast state of UDP sockets, on the loopback interface: an IPv4 socket
 * that joined an any-source group (239.7.7.7) and a source-specific one (232.7.7.7 from
 * 127.0.0.1 only), another that joined 239.8.8.8 blocking one source and receives only its
 * own groups (IP_MULTICAST_ALL off), a sender with its
 * outgoing interface chosen by address and a TTL of 5, a socket with loopback off and TTL 0,
 * and an IPv6 socket that joined ff15::7:7 with hops 3, loopback off, its outgoing interface
 * and a unicast hop limit of 7. After restore every membership and filter reads back as it
 * was (MCAST_MSFILTER), every option too, and datagrams sent to both groups arrive.
 */
#define _GNU_SOURCE
#include <net/if.h>

#include "inet.h"

static unsigned lo_index;

static struct sockaddr_storage v4(const char *text)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;
    in->sin_family = AF_INET;
    inet_pton(AF_INET, text, &in->sin_addr);
    return ss;
}

/* The filter of fd's membership of `group` on lo: mode (MCAST_INCLUDE/EXCLUDE), number of
 * sources, the first source in *first; -1 if fd is no member. */
static int filter_of(int fd, int level, struct sockaddr_storage group, int *count,
                     struct sockaddr_storage *first)
{
    union {
        struct group_filter gf;
        char room[GROUP_FILTER_SIZE(4)];
    } u;
    memset(&u, 0, sizeof u);
    u.gf.gf_interface = lo_index;
    u.gf.gf_group = group;
    u.gf.gf_numsrc = 4;
    socklen_t len = sizeof u;
    if (getsockopt(fd, level, MCAST_MSFILTER, &u, &len))
        return -1;
    *count = (int)u.gf.gf_numsrc;
    if (*count > 0)
        *first = u.gf.gf_slist[0];
    return (int)u.gf.gf_fmode;
}

static int is_v4(const struct sockaddr_storage *ss, const char *text)
{
    struct sockaddr_storage want = v4(text);
    return ss->ss_family == AF_INET &&
           ((struct sockaddr_in *)ss)->sin_addr.s_addr ==
               ((struct sockaddr_in *)&want)->sin_addr.s_addr;
}

static void check_memberships(int r, int x, int r6, const char *when)
{
    struct sockaddr_storage first, g6;
    memset(&g6, 0, sizeof g6);
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&g6;
    in6->sin6_family = AF_INET6;
    inet_pton(AF_INET6, "ff15::7:7", &in6->sin6_addr);
    int n = -1;
    if (filter_of(r, IPPROTO_IP, v4("239.7.7.7"), &n, &first) != MCAST_EXCLUDE || n != 0)
        FAILED("%s: 239.7.7.7 membership lost or changed (n=%d)", when, n);
    n = -1;
    if (filter_of(r, IPPROTO_IP, v4("232.7.7.7"), &n, &first) != MCAST_INCLUDE || n != 1 ||
        !is_v4(&first, "127.0.0.1"))
        FAILED("%s: source-specific 232.7.7.7 membership lost or changed (n=%d)", when, n);
    n = -1;
    if (filter_of(x, IPPROTO_IP, v4("239.8.8.8"), &n, &first) != MCAST_EXCLUDE || n != 1 ||
        !is_v4(&first, "127.0.0.9"))
        FAILED("%s: 239.8.8.8 with a blocked source lost or changed (n=%d)", when, n);
    n = -1;
    if (filter_of(r6, IPPROTO_IPV6, g6, &n, &first) != MCAST_EXCLUDE || n != 0)
        FAILED("%s: ff15::7:7 membership lost", when);
    if (filter_of(x, IPPROTO_IP, v4("239.7.7.7"), &n, &first) != -1)
        FAILED("%s: a socket became a member of a group it never joined", when);
}

/* Sends `msg` from s to group:port and expects it on r. */
static void expect_delivery(int s, int r, const char *group, int port, const char *msg,
                            const char *when)
{
    sock_addr to;
    memset(&to, 0, sizeof to);
    to.in4.sin_family = AF_INET;
    to.in4.sin_port = htons(port);
    inet_pton(AF_INET, group, &to.in4.sin_addr);
    if (sendto(s, msg, strlen(msg), 0, &to.sa, sizeof to.in4) != (ssize_t)strlen(msg)) {
        FAILED("%s: send to %s: %s", when, group, strerror(errno));
        return;
    }
    char buf[64] = {0};
    if (wait_readable(r) || recv(r, buf, sizeof buf - 1, 0) != (ssize_t)strlen(msg) ||
        strcmp(buf, msg))
        FAILED("%s: nothing (or not \"%s\") arrived through group %s", when, msg, group);
}

int main(void)
{
    start();
    lo_index = if_nametoindex("lo");
    sock_addr any = loopback(AF_INET);
    any.in4.sin_addr.s_addr = htonl(INADDR_ANY);
    int r = socket(AF_INET, SOCK_DGRAM, 0), x = socket(AF_INET, SOCK_DGRAM, 0);
    int s = socket(AF_INET, SOCK_DGRAM, 0), q = socket(AF_INET, SOCK_DGRAM, 0);
    int r6 = socket(AF_INET6, SOCK_DGRAM, 0);
    if (r < 0 || x < 0 || s < 0 || q < 0 || r6 < 0 || bind(r, &any.sa, sizeof any.in4)) {
        printf("FAIL sockets: %s\n", strerror(errno));
        return 1;
    }
    int port = ntohs(addr_of(r, 0).in4.sin_port);

    struct ip_mreqn any_source = {.imr_ifindex = (int)lo_index};
    inet_pton(AF_INET, "239.7.7.7", &any_source.imr_multiaddr);
    struct group_source_req specific = {.gsr_interface = lo_index};
    specific.gsr_group = v4("232.7.7.7");
    specific.gsr_source = v4("127.0.0.1");
    struct ip_mreqn blocked_group = {.imr_ifindex = (int)lo_index};
    inet_pton(AF_INET, "239.8.8.8", &blocked_group.imr_multiaddr);
    struct ip_mreq_source blocked = {0};
    inet_pton(AF_INET, "239.8.8.8", &blocked.imr_multiaddr);
    inet_pton(AF_INET, "127.0.0.9", &blocked.imr_sourceaddr);
    inet_pton(AF_INET, "127.0.0.1", &blocked.imr_interface);
    struct in_addr send_from;
    inet_pton(AF_INET, "127.0.0.1", &send_from);
    struct ipv6_mreq group6 = {.ipv6mr_interface = lo_index};
    inet_pton(AF_INET6, "ff15::7:7", &group6.ipv6mr_multiaddr);
    int ttl = 5, zero = 0, hops6 = 3, unicast6 = 7, lo = (int)lo_index;
    if (setsockopt(r, IPPROTO_IP, IP_ADD_MEMBERSHIP, &any_source, sizeof any_source) ||
        setsockopt(r, IPPROTO_IP, MCAST_JOIN_SOURCE_GROUP, &specific, sizeof specific) ||
        setsockopt(x, IPPROTO_IP, IP_ADD_MEMBERSHIP, &blocked_group, sizeof blocked_group) ||
        setsockopt(x, IPPROTO_IP, IP_BLOCK_SOURCE, &blocked, sizeof blocked) ||
        setsockopt(x, IPPROTO_IP, IP_MULTICAST_ALL, &zero, sizeof zero) ||
        setsockopt(s, IPPROTO_IP, IP_MULTICAST_IF, &send_from, sizeof send_from) ||
        setsockopt(s, IPPROTO_IP, IP_MULTICAST_TTL, &ttl, sizeof ttl) ||
        setsockopt(q, IPPROTO_IP, IP_MULTICAST_LOOP, &zero, sizeof zero) ||
        setsockopt(q, IPPROTO_IP, IP_MULTICAST_TTL, &zero, sizeof zero) ||
        setsockopt(r6, IPPROTO_IPV6, IPV6_JOIN_GROUP, &group6, sizeof group6) ||
        setsockopt(r6, IPPROTO_IPV6, IPV6_MULTICAST_HOPS, &hops6, sizeof hops6) ||
        setsockopt(r6, IPPROTO_IPV6, IPV6_MULTICAST_LOOP, &zero, sizeof zero) ||
        setsockopt(r6, IPPROTO_IPV6, IPV6_MULTICAST_IF, &lo, sizeof lo) ||
        setsockopt(r6, IPPROTO_IPV6, IPV6_UNICAST_HOPS, &unicast6, sizeof unicast6)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        return 1;
    }
    check_memberships(r, x, r6, "before");
    expect_delivery(s, r, "239.7.7.7", port, "before", "before");
    if (fail_msg[0])
        return verdict();
    ready_then_wait();

    check_memberships(r, x, r6, "after restore");
    struct in_addr now_from = {0};
    socklen_t len = sizeof now_from;
    getsockopt(s, IPPROTO_IP, IP_MULTICAST_IF, &now_from, &len);
    if (now_from.s_addr != send_from.s_addr || int_opt(s, IPPROTO_IP, IP_MULTICAST_TTL) != ttl)
        FAILED("sender's IP_MULTICAST_IF or IP_MULTICAST_TTL lost");
    if (int_opt(x, IPPROTO_IP, IP_MULTICAST_ALL) != 0 || int_opt(r, IPPROTO_IP, IP_MULTICAST_ALL) != 1)
        FAILED("IP_MULTICAST_ALL changed");
    if (int_opt(q, IPPROTO_IP, IP_MULTICAST_LOOP) != 0 ||
        int_opt(q, IPPROTO_IP, IP_MULTICAST_TTL) != 0)
        FAILED("IP_MULTICAST_LOOP off / TTL 0 lost");
    if (int_opt(r6, IPPROTO_IPV6, IPV6_MULTICAST_HOPS) != hops6 ||
        int_opt(r6, IPPROTO_IPV6, IPV6_MULTICAST_LOOP) != 0 ||
        int_opt(r6, IPPROTO_IPV6, IPV6_MULTICAST_IF) != lo ||
        int_opt(r6, IPPROTO_IPV6, IPV6_UNICAST_HOPS) != unicast6)
        FAILED("IPv6 hops %d, loop %d, interface %d or unicast hops %d lost",
               int_opt(r6, IPPROTO_IPV6, IPV6_MULTICAST_HOPS),
               int_opt(r6, IPPROTO_IPV6, IPV6_MULTICAST_LOOP),
               int_opt(r6, IPPROTO_IPV6, IPV6_MULTICAST_IF),
               int_opt(r6, IPPROTO_IPV6, IPV6_UNICAST_HOPS));
    expect_delivery(s, r, "239.7.7.7", port, "any-source", "after restore");
    expect_delivery(s, r, "232.7.7.7", port, "source-specific", "after restore");
    return verdict();
}
