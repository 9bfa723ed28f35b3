/*
 * unix_abstract - a SOCK_SEQPACKET listener bound to an abstract name, and a client in a
 * child that bound itself to an abstract name of its own before connecting. Messages are
 * queued both ways at checkpoint time (boundaries included, an empty one among them).
 * After restore both sides see the same names (getsockname, getpeername), the messages
 * arrive whole and in order, and the connection still works.
 */
#define _GNU_SOURCE
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "zdtm.h"

static struct sockaddr_un server, client_addr;
static socklen_t server_len, client_len;

static socklen_t abstract(struct sockaddr_un *a, const char *what)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    int n = snprintf(a->sun_path + 1, sizeof a->sun_path - 1, "mlckpt-zdtm-%s-%d", what,
                     (int)getpid());
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
}

/* Whether the name of `fd` (peer: of its peer) is `want`. */
static int named(int fd, int peer, const struct sockaddr_un *want, socklen_t want_len)
{
    struct sockaddr_un got;
    socklen_t len = sizeof got;
    memset(&got, 0, sizeof got);
    int rc = peer ? getpeername(fd, (struct sockaddr *)&got, &len)
                  : getsockname(fd, (struct sockaddr *)&got, &len);
    return rc == 0 && len == want_len && memcmp(&got, want, len) == 0;
}

static const char *to_server[] = {"first", "", "third message"};
static const char *to_client[] = {"alpha", "beta"};

static int expect(int fd, const char *want)
{
    char buf[64];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    return n == (ssize_t)strlen(want) && memcmp(buf, want, (size_t)n) == 0;
}

int main(void)
{
    start();
    server_len = abstract(&server, "abstract");
    int l = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&server, server_len) || listen(l, 3)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        return 1;
    }
    int sync[2], go[2];
    sync_pipes_or_fail(sync, go);
    pid_t child = fork_or_fail();
    if (child == 0) {
        client_len = abstract(&client_addr, "client");
        int c = socket(AF_UNIX, SOCK_SEQPACKET, 0);
        if (c < 0 || bind(c, (struct sockaddr *)&client_addr, client_len) ||
            connect(c, (struct sockaddr *)&server, server_len))
            _exit(2);
        for (int i = 0; i < 3; i++)
            if (send(c, to_server[i], strlen(to_server[i]), 0) < 0)
                _exit(3);
        char x;
        if (write_full(sync[1], "c", 1) || read_full(go[0], &x, 1))
            _exit(4);
        if (!named(c, 0, &client_addr, client_len))
            _exit(5);
        if (!named(c, 1, &server, server_len))
            _exit(6);
        for (int i = 0; i < 2; i++)
            if (!expect(c, to_client[i]))
                _exit(7);
        if (send(c, "again", 5, 0) != 5 || !expect(c, "ok"))
            _exit(8);
        _exit(0);
    }
    /* The child's name: its pid is in it. */
    int a = accept(l, NULL, NULL);
    char x;
    if (a < 0 || read_full(sync[0], &x, 1)) {
        printf("FAIL accept: %s\n", strerror(errno));
        kill(child, SIGKILL);
        return 1;
    }
    for (int i = 0; i < 2; i++)
        send(a, to_client[i], strlen(to_client[i]), 0);
    struct sockaddr_un peer_before;
    socklen_t peer_before_len = sizeof peer_before;
    memset(&peer_before, 0, sizeof peer_before);
    getpeername(a, (struct sockaddr *)&peer_before, &peer_before_len);
    ready_then_wait();

    if (!named(l, 0, &server, server_len))
        FAILED("the listener's name changed");
    if (!named(a, 0, &server, server_len))
        FAILED("the accepted socket's name changed");
    if (!named(a, 1, &peer_before, peer_before_len))
        FAILED("the accepted socket's peer name changed");
    if (write_full(go[1], "g", 1))
        FAILED("go");
    for (int i = 0; i < 3; i++)
        if (!expect(a, to_server[i]))
            FAILED("message %d to the server is not back whole", i);
    if (!expect(a, "again") || send(a, "ok", 2, 0) != 2)
        FAILED("the connection does not work after restore");
    reap_child(child);
    return verdict();
}
