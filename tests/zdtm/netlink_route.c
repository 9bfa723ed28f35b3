/*
 * netlink_route - NETLINK_ROUTE sockets as libraries keep them: one bound by the kernel
 * (port = the process's PID) listening to the link group, one never used. After restore
 * the first has its port and group back and answers a link dump (the loopback is in it),
 * the second can be used too, and if_nameindex() works.
 */
#define _GNU_SOURCE
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <fcntl.h>
#include <net/if.h>
#include <sys/socket.h>

#include "zdtm.h"

/* Dumps the links through `fd`; whether interface index 1 (lo) is in the answer. */
static int dump_has_loopback(int fd)
{
    struct {
        struct nlmsghdr h;
        struct ifinfomsg i;
    } req;
    memset(&req, 0, sizeof req);
    req.h.nlmsg_len = sizeof req;
    req.h.nlmsg_type = RTM_GETLINK;
    req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.h.nlmsg_seq = 7;
    req.i.ifi_family = AF_UNSPEC;
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    if (sendto(fd, &req, sizeof req, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0)
        return 0;
    static char buf[1 << 16];
    int found = 0;
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n <= 0)
            return 0;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n);
             h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_type == NLMSG_DONE)
                return found;
            if (h->nlmsg_type == NLMSG_ERROR)
                return 0;
            if (h->nlmsg_type == RTM_NEWLINK && ((struct ifinfomsg *)NLMSG_DATA(h))->ifi_index == 1)
                found = 1;
        }
    }
}

int main(void)
{
    start();
    int a = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    int b = socket(AF_NETLINK, SOCK_DGRAM, NETLINK_ROUTE);
    struct sockaddr_nl local = {.nl_family = AF_NETLINK, .nl_groups = RTMGRP_LINK};
    if (a < 0 || b < 0 || bind(a, (struct sockaddr *)&local, sizeof local)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        return 1;
    }
    struct sockaddr_nl before;
    socklen_t len = sizeof before;
    if (getsockname(a, (struct sockaddr *)&before, &len) || !dump_has_loopback(a)) {
        printf("FAIL first dump: %s\n", strerror(errno));
        return 1;
    }
    ready_then_wait();

    struct sockaddr_nl after;
    len = sizeof after;
    if (getsockname(a, (struct sockaddr *)&after, &len))
        FAILED("getsockname: %s", strerror(errno));
    else if (after.nl_pid != before.nl_pid || after.nl_groups != before.nl_groups)
        FAILED("port %u groups 0x%x, was port %u groups 0x%x", after.nl_pid, after.nl_groups,
               before.nl_pid, before.nl_groups);
    int cloexec = fcntl(a, F_GETFD);
    if (!(cloexec & FD_CLOEXEC))
        FAILED("close-on-exec is lost");
    if (!dump_has_loopback(a))
        FAILED("the bound socket does not answer a link dump");
    if (!dump_has_loopback(b))
        FAILED("the unused socket does not answer a link dump");
    struct if_nameindex *names = if_nameindex();
    if (!names)
        FAILED("if_nameindex: %s", strerror(errno));
    else
        if_freenameindex(names);
    return verdict();
}
