/*
 * tcp_established - established TCP connections with both ends in the job, data in flight
 * both ways at checkpoint time:
 *  - IPv4, parent (accepted end, its listener still open) <-> child (connecting end):
 *    200000 bytes parent->child that the child has not read (part of them not even sent:
 *    the child's receive window is full) and 50000 bytes child->parent;
 *  - IPv6, both ends in the parent, nonblocking, TCP_NODELAY: 3000 and 7000 bytes.
 * After restore each side reads and checks what was queued for it, addresses and flags
 * are as they were, the connections go on working both ways, and the listener accepts.
 */
#define _GNU_SOURCE
#include "inet.h"

#define TO_CHILD 200000
#define TO_PARENT 50000

static int big_sndbuf(int fd)
{
    int size = 1 << 20;
    return setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
}

int main(void)
{
    start();
    sock_addr at;
    int l = tcp_listener(AF_INET, 4, &at);
    int sync[2], go[2];
    if (l < 0 || pipe(sync) || pipe(go)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        return 1;
    }
    static unsigned char buf[TO_CHILD];
    pid_t child = fork_or_fail();
    if (child == 0) {
        close(l);
        close(sync[0]);
        close(go[1]);
        int c = socket(AF_INET, SOCK_STREAM, 0);
        if (c < 0 || big_sndbuf(c) || connect(c, &at.sa, addr_len(&at)))
            _exit(2);
        sock_addr mine = addr_of(c, 0), peer = addr_of(c, 1);
        pattern(buf, TO_PARENT, 2);
        if (write_full(c, buf, TO_PARENT) || write_full(sync[1], "w", 1))
            _exit(3);
        char g;
        if (read_full(go[0], &g, 1))
            _exit(4);
        sock_addr mine2 = addr_of(c, 0), peer2 = addr_of(c, 1);
        if (!same_addr(&mine, &mine2) || !same_addr(&peer, &peer2))
            _exit(5);
        int rc = expect_stream(c, TO_CHILD, 1);
        if (rc)
            _exit(rc == -1 ? 6 : 7);
        if (write_full(c, "pong", 4) || recv_full(c, buf, 4) || memcmp(buf, "ping", 4))
            _exit(8);
        _exit(0);
    }
    close(sync[1]);
    close(go[0]);
    int s = accept(l, NULL, NULL);
    char w;
    if (s < 0 || big_sndbuf(s) || read_full(sync[0], &w, 1)) {
        printf("FAIL accept: %s\n", strerror(errno));
        kill(child, SIGKILL);
        return 1;
    }
    /* The child reads nothing yet: its window fills, the rest waits in our send queue. */
    pattern(buf, TO_CHILD, 1);
    if (write_full(s, buf, TO_CHILD)) {
        printf("FAIL write: %s\n", strerror(errno));
        kill(child, SIGKILL);
        return 1;
    }

    sock_addr at6;
    int l6 = tcp_listener(AF_INET6, 1, &at6);
    int a6 = socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    if (l6 < 0 || a6 < 0 || setsockopt(a6, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) ||
        (connect(a6, &at6.sa, addr_len(&at6)) && errno != EINPROGRESS)) {
        printf("FAIL IPv6 set-up: %s\n", strerror(errno));
        kill(child, SIGKILL);
        return 1;
    }
    int b6 = accept(l6, NULL, NULL);
    close(l6);
    struct pollfd p = {a6, POLLOUT, 0};
    unsigned char small[7000];
    pattern(small, 3000, 3);
    if (b6 < 0 || poll(&p, 1, 5000) != 1 || write(a6, small, 3000) != 3000) {
        printf("FAIL IPv6 connection: %s\n", strerror(errno));
        kill(child, SIGKILL);
        return 1;
    }
    pattern(small, 7000, 4);
    if (write_full(b6, small, 7000)) {
        printf("FAIL IPv6 write: %s\n", strerror(errno));
        kill(child, SIGKILL);
        return 1;
    }
    sock_addr a6_mine = addr_of(a6, 0), a6_peer = addr_of(a6, 1);
    struct timespec settle = {0, 100 * 1000 * 1000};
    nanosleep(&settle, NULL);
    ready_then_wait();

    if (write_full(go[1], "g", 1))
        FAILED("write go: %s", strerror(errno));
    int rc = expect_stream(s, TO_PARENT, 2);
    if (rc)
        FAILED("IPv4: the %d bytes from the child %s", TO_PARENT, rc == -1 ? "are missing" : "differ");
    if (write_full(s, "ping", 4) || recv_full(s, buf, 4) || memcmp(buf, "pong", 4))
        FAILED("IPv4: no pong from the child");
    sock_addr now_mine = addr_of(a6, 0), now_peer = addr_of(a6, 1);
    if (!same_addr(&a6_mine, &now_mine) || !same_addr(&a6_peer, &now_peer))
        FAILED("IPv6: addresses changed");
    if (!(fcntl(a6, F_GETFL) & O_NONBLOCK) || int_opt(a6, IPPROTO_TCP, TCP_NODELAY) != 1)
        FAILED("IPv6: O_NONBLOCK or TCP_NODELAY lost");
    if ((rc = expect_stream(a6, 7000, 4)))
        FAILED("IPv6: 7000 bytes %s", rc == -1 ? "missing" : "differ");
    if ((rc = expect_stream(b6, 3000, 3)))
        FAILED("IPv6: 3000 bytes %s", rc == -1 ? "missing" : "differ");
    if (write(a6, "x", 1) != 1 || recv_full(b6, buf, 1) || buf[0] != 'x')
        FAILED("IPv6: the connection does not work after restore");
    int c2 = socket(AF_INET, SOCK_STREAM, 0);
    if (c2 < 0 || connect(c2, &at.sa, addr_len(&at)) || accept(l, NULL, NULL) < 0)
        FAILED("the listener does not accept after restore: %s", strerror(errno));
    /* The child's exit status: 5 addresses changed, 6/7 its bytes missing/different, 8 no
     * ping. */
    reap_child(child);
    return verdict();
}
