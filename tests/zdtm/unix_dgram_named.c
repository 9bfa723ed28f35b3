/*
 * unix_dgram_named - datagram sockets bound to names: a server bound to a path, a client
 * in a child bound to an abstract name and connected to the server, an unnamed sender.
 * Queued at checkpoint time: 3 datagrams from the client and 1 from the unnamed sender
 * at the server, 2 from the server at the client. After restore recvfrom gives each
 * datagram with its sender's name, the client is still connected (send without an
 * address, getpeername), and the server can answer the client by name.
 */
#define _GNU_SOURCE
#include <stddef.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>

#include "zdtm.h"

static struct sockaddr_un server, client;
static socklen_t server_len, client_len;

/* recv one datagram; whether it is `want` from `from` (NULL: unnamed). */
static int expect_from(int fd, const char *want, const struct sockaddr_un *from, socklen_t from_len)
{
    char buf[64];
    struct sockaddr_un got;
    socklen_t len = sizeof got;
    memset(&got, 0, sizeof got);
    ssize_t n = recvfrom(fd, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&got, &len);
    if (n != (ssize_t)strlen(want) || memcmp(buf, want, (size_t)n))
        return 0;
    if (!from)
        return len == 0 || len == sizeof(sa_family_t);
    return len == from_len && memcmp(&got, from, len) == 0;
}

/* Waits at most 5 s in a receive: a lost datagram fails the test instead of hanging it. */
static void receive_timeout(int fd)
{
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

int main(void)
{
    start();
    server.sun_family = AF_UNIX;
    snprintf(server.sun_path, sizeof server.sun_path, "/tmp/mlckpt-zdtm-dgram-%d.sock",
             (int)getpid());
    server_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(server.sun_path) + 1);
    unlink(server.sun_path);
    client.sun_family = AF_UNIX;
    int n = snprintf(client.sun_path + 1, sizeof client.sun_path - 1, "mlckpt-zdtm-dgc-%d",
                     (int)getpid());
    client_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
    int s = socket(AF_UNIX, SOCK_DGRAM, 0);
    int u = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (s < 0 || u < 0 || bind(s, (struct sockaddr *)&server, server_len)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        return 1;
    }
    receive_timeout(s);
    int sync[2], go[2];
    sync_pipes_or_fail(sync, go);
    pid_t child = fork_or_fail();
    if (child == 0) {
        int c = socket(AF_UNIX, SOCK_DGRAM, 0);
        receive_timeout(c);
        if (c < 0 || bind(c, (struct sockaddr *)&client, client_len) ||
            connect(c, (struct sockaddr *)&server, server_len))
            _exit(2);
        if (send(c, "c1", 2, 0) != 2 || send(c, "c2", 2, 0) != 2 || send(c, "c3", 2, 0) != 2)
            _exit(3);
        char x;
        if (write_full(sync[1], "c", 1) || read_full(go[0], &x, 1))
            _exit(4);
        struct sockaddr_un peer;
        socklen_t len = sizeof peer;
        if (getpeername(c, (struct sockaddr *)&peer, &len) || strcmp(peer.sun_path, server.sun_path))
            _exit(5);
        if (!expect_from(c, "s1", &server, server_len) || !expect_from(c, "s2", &server, server_len))
            _exit(6);
        if (send(c, "after", 5, 0) != 5)
            _exit(7);
        char buf[8];
        if (recv(c, buf, sizeof buf, 0) != 5 || memcmp(buf, "reply", 5))
            _exit(8);
        _exit(0);
    }
    char x;
    if (read_full(sync[0], &x, 1) ||
        sendto(u, "anon", 4, 0, (struct sockaddr *)&server, server_len) != 4 ||
        sendto(s, "s1", 2, 0, (struct sockaddr *)&client, client_len) != 2 ||
        sendto(s, "s2", 2, 0, (struct sockaddr *)&client, client_len) != 2) {
        printf("FAIL set-up sends: %s\n", strerror(errno));
        kill(child, SIGKILL);
        return 1;
    }
    ready_then_wait();

    for (int i = 1; i <= 3; i++) {
        char want[4];
        snprintf(want, sizeof want, "c%d", i);
        if (!expect_from(s, want, &client, client_len))
            FAILED("datagram %s is not back with its sender's name", want);
    }
    if (!expect_from(s, "anon", NULL, 0))
        FAILED("the unnamed sender's datagram is not back");
    if (write_full(go[1], "g", 1))
        FAILED("go");
    char buf[8];
    struct sockaddr_un from;
    socklen_t len = sizeof from;
    if (recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &len) != 5 ||
        sendto(s, "reply", 5, 0, (struct sockaddr *)&from, len) != 5)
        FAILED("the client's new datagram does not come, or cannot be answered");
    if (sendto(u, "x", 1, 0, (struct sockaddr *)&server, server_len) != 1)
        FAILED("the unnamed sender does not work: %s", strerror(errno));
    reap_child(child);
    unlink(server.sun_path);
    return verdict();
}
