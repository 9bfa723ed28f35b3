/*
 * unix_listen - a stream listener bound to a path (backlog 7, SO_PASSCRED) with, at
 * checkpoint time: an accepted connection to a client in another process holding data
 * queued both ways (1000 bytes to the server, 700 to the client), and a second client whose
 * connection waits in the accept queue. After restore: the names (getsockname,
 * getpeername) are as before, the socket file is back with its mode, the queued data is
 * there, the waiting connection is accepted and works, and a new client can connect.
 * A second listener whose socket file was removed (after its client connected) keeps its
 * name and connection, and its file stays removed.
 */
#define _GNU_SOURCE
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "zdtm.h"

#define TO_SERVER 1000
#define TO_CLIENT 700

static struct sockaddr_un addr;

static int connect_to_server(void)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr))
        return -1;
    return fd;
}

/* Whether `fd`'s name (peer: its peer's) is the server's path. */
static int has_server_name(int fd, int peer)
{
    struct sockaddr_un got;
    socklen_t len = sizeof got;
    int rc = peer ? getpeername(fd, (struct sockaddr *)&got, &len)
                  : getsockname(fd, (struct sockaddr *)&got, &len);
    return rc == 0 && got.sun_family == AF_UNIX && strcmp(got.sun_path, addr.sun_path) == 0;
}

/* Exit codes say what went wrong in a client. */
static void client(int first, int sync_w, int go_r)
{
    int fd = connect_to_server();
    if (fd < 0)
        _exit(2);
    static unsigned char buf[4096];
    if (first) {
        fill_stream_pattern(buf, TO_SERVER, 1);
        if (write_full(fd, buf, TO_SERVER))
            _exit(3);
    }
    if (write_full(sync_w, "c", 1))
        _exit(4);
    char c;
    if (read_full(go_r, &c, 1))
        _exit(5);
    if (!has_server_name(fd, 1))
        _exit(6);
    if (first && check_stream_pattern(fd, TO_CLIENT, 2))
        _exit(7);
    if (write_full(fd, first ? "one" : "two", 3))
        _exit(8);
    if (read_full(fd, buf, 2) || memcmp(buf, "ok", 2))
        _exit(9);
    _exit(0);
}

int main(void)
{
    start();
    addr.sun_family = AF_UNIX;
    snprintf(addr.sun_path, sizeof addr.sun_path, "/tmp/mlckpt-zdtm-listen-%d.sock",
             (int)getpid());
    unlink(addr.sun_path);
    int one = 1;
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&addr, sizeof addr) || listen(l, 7) ||
        chmod(addr.sun_path, 0640) ||
        setsockopt(l, SOL_SOCKET, SO_PASSCRED, &one, sizeof one)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        return 1;
    }
    int sync[2], go[2];
    sync_pipes_or_fail(sync, go);
    pid_t first = fork_or_fail();
    if (first == 0)
        client(1, sync[1], go[0]);
    int a = accept(l, NULL, NULL);
    char c;
    static unsigned char buf[4096];
    fill_stream_pattern(buf, TO_CLIENT, 2);
    if (a < 0 || read_full(sync[0], &c, 1) || write_full(a, buf, TO_CLIENT)) {
        printf("FAIL accept: %s\n", strerror(errno));
        kill(first, SIGKILL);
        return 1;
    }
    pid_t second = fork_or_fail();
    if (second == 0)
        client(0, sync[1], go[0]);
    if (read_full(sync[0], &c, 1)) {
        printf("FAIL second client\n");
        kill(first, SIGKILL);
        kill(second, SIGKILL);
        return 1;
    }
    /* The second listener: its client is this process, its file removed. */
    struct sockaddr_un gone = addr;
    snprintf(gone.sun_path, sizeof gone.sun_path, "/tmp/mlckpt-zdtm-gone-%d.sock", (int)getpid());
    unlink(gone.sun_path);
    int l2 = socket(AF_UNIX, SOCK_STREAM, 0);
    int c2 = socket(AF_UNIX, SOCK_STREAM, 0);
    if (l2 < 0 || c2 < 0 || bind(l2, (struct sockaddr *)&gone, sizeof gone) || listen(l2, 1) ||
        connect(c2, (struct sockaddr *)&gone, sizeof gone)) {
        printf("FAIL second listener: %s\n", strerror(errno));
        return 1;
    }
    int a2 = accept(l2, NULL, NULL);
    if (a2 < 0 || unlink(gone.sun_path) || write_full(c2, "x", 1)) {
        printf("FAIL second listener accept: %s\n", strerror(errno));
        return 1;
    }
    ready_then_wait();

    struct sockaddr_un got;
    socklen_t got_len = sizeof got;
    if (access(gone.sun_path, F_OK) == 0)
        FAILED("the removed socket file is back");
    if (getsockname(a2, (struct sockaddr *)&got, &got_len) || strcmp(got.sun_path, gone.sun_path))
        FAILED("the connection to the removed name lost its name");
    if (read_full(a2, buf, 1) || buf[0] != 'x' || write_full(a2, "y", 1) || read_full(c2, buf, 1) ||
        buf[0] != 'y')
        FAILED("the connection to the removed name does not work");

    struct stat st;
    if (stat(addr.sun_path, &st) || !S_ISSOCK(st.st_mode) || (st.st_mode & 0777) != 0640)
        FAILED("the socket file is not back as it was (mode 0%o)", st.st_mode & 0777);
    if (!has_server_name(l, 0))
        FAILED("the listener's name changed");
    if (!has_server_name(a, 0))
        FAILED("the accepted socket's name changed");
    int flag = 0;
    socklen_t flen = sizeof flag;
    if (getsockopt(l, SOL_SOCKET, SO_ACCEPTCONN, &flag, &flen) || !flag)
        FAILED("the listener does not listen");
    if (getsockopt(l, SOL_SOCKET, SO_PASSCRED, &flag, &flen) || !flag)
        FAILED("SO_PASSCRED is lost");
    if (write_full(go[1], "gg", 2))
        FAILED("go: %s", strerror(errno));
    int rc = check_stream_pattern(a, TO_SERVER, 1);
    if (rc)
        FAILED("the %d bytes queued to the server %s", TO_SERVER, rc == -1 ? "are missing" : "differ");
    if (read_full(a, buf, 3) || memcmp(buf, "one", 3) || write_full(a, "ok", 2))
        FAILED("the first client does not answer");
    int b = accept(l, NULL, NULL);
    if (b < 0 || !has_server_name(b, 0))
        FAILED("the waiting connection is not there: %s", strerror(errno));
    else if (read_full(b, buf, 3) || memcmp(buf, "two", 3) || write_full(b, "ok", 2))
        FAILED("the waiting client does not answer");
    int n = connect_to_server();
    int m = n < 0 ? -1 : accept(l, NULL, NULL);
    if (m < 0 || write_full(n, "new", 3) || read_full(m, buf, 3) || memcmp(buf, "new", 3))
        FAILED("a new connection does not work: %s", strerror(errno));
    reap_child(first);
    reap_child(second);
    unlink(addr.sun_path);
    return verdict();
}
