/*
 * unix_job.c - a server and its clients over a unix socket bound to a path, as an MPI
 * launcher's PMIx server and its ranks: the root listens on /tmp/mlckpt-unixjob-<pid>.sock
 * and forks <clients> children that connect to it. Every tick the server sends each client
 * a request, each client answers from its own running state; the server sends the next
 * tick's requests before it sleeps, so requests and answers are in flight at any moment.
 * The children also report to the server over a datagram socket bound to an abstract name.
 * With <connections> > 0 (for measurements), each client also opens that many extra
 * connections to the listener, kept open and idle.
 *
 * Usage:  unix_job <ticks> [clients] [connections]
 * Output: "pid <pid>"
 *         "tick <i> pid=<pid> sum=<hex>"
 *         "done reports=<datagrams received> idle=<extra connections>"
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_CLIENTS 16

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void full(ssize_t (*io)(int, void *, size_t), int fd, void *buf, size_t n)
{
    size_t done = 0;
    while (done < n) {
        ssize_t r = io(fd, (char *)buf + done, n - done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            die("socket i/o");
        done += (size_t)r;
    }
}

static ssize_t do_write(int fd, void *buf, size_t n) { return write(fd, buf, n); }

static void read_all(int fd, void *buf, size_t n) { full(read, fd, buf, n); }
static void write_all(int fd, const void *buf, size_t n) { full(do_write, fd, (void *)buf, n); }

static struct sockaddr_un listen_addr, report_addr;
static socklen_t report_len;

static int connect_server(void)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&listen_addr, sizeof listen_addr))
        die("connect");
    return fd;
}

static void client(int k, int extra)
{
    int fd = connect_server();
    for (int i = 0; i < extra; i++)
        connect_server();
    int rep = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (rep < 0 || connect(rep, (struct sockaddr *)&report_addr, report_len))
        die("report socket");
    uint64_t state = 0x9e3779b97f4a7c15ull * (uint64_t)(k + 1);
    for (;;) {
        uint32_t request[2];
        ssize_t r = read(fd, request, sizeof request);
        if (r == 0)
            _exit(0);
        if (r != sizeof request)
            die("client read");
        state = state * 6364136223846793005ull + request[0] * 31u + request[1];
        write_all(fd, &state, sizeof state);
        if (request[0] % 4 == (uint32_t)k % 4) {
            char line[32];
            int n = snprintf(line, sizeof line, "%d:%u", k, request[0]);
            send(rep, line, (size_t)n, 0);
        }
    }
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    int ticks = argc > 1 ? atoi(argv[1]) : 60;
    int clients = argc > 2 ? atoi(argv[2]) : 3;
    int extra = argc > 3 ? atoi(argv[3]) : 0;
    if (clients < 1 || clients > MAX_CLIENTS)
        clients = 3;
    printf("pid %d\n", getpid());
    listen_addr.sun_family = AF_UNIX;
    snprintf(listen_addr.sun_path, sizeof listen_addr.sun_path, "/tmp/mlckpt-unixjob-%d.sock",
             getpid());
    unlink(listen_addr.sun_path);
    report_addr.sun_family = AF_UNIX;
    int n = snprintf(report_addr.sun_path + 1, sizeof report_addr.sun_path - 1,
                     "mlckpt-unixjob-report-%d", getpid());
    report_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    int reports = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&listen_addr, sizeof listen_addr) ||
        listen(l, 4096) || reports < 0 ||
        bind(reports, (struct sockaddr *)&report_addr, report_len))
        die("listen");
    pid_t kids[MAX_CLIENTS];
    int conn[MAX_CLIENTS];
    int idle = 0;
    for (int k = 0; k < clients; k++) {
        kids[k] = fork();
        if (kids[k] < 0)
            die("fork");
        if (kids[k] == 0)
            client(k, extra);
        conn[k] = accept(l, NULL, NULL);
        for (int i = 0; i < extra; i++)
            if (accept(l, NULL, NULL) >= 0)
                idle++;
        if (conn[k] < 0)
            die("accept");
    }
    uint64_t sum = 0;
    unsigned got_reports = 0;
    uint32_t request[2] = {0, 0};
    for (int k = 0; k < clients; k++) {
        request[1] = (uint32_t)k;
        write_all(conn[k], request, sizeof request);
    }
    for (int i = 0; i < ticks; i++) {
        for (int k = 0; k < clients; k++) {
            uint64_t answer;
            read_all(conn[k], &answer, sizeof answer);
            sum = sum * 1099511628211ull ^ answer;
        }
        char buf[64];
        while (recv(reports, buf, sizeof buf, 0) > 0)
            got_reports++;
        printf("tick %d pid=%d sum=%016llx\n", i, getpid(), (unsigned long long)sum);
        request[0] = (uint32_t)(i + 1);
        for (int k = 0; k < clients; k++) {
            request[1] = (uint32_t)k;
            write_all(conn[k], request, sizeof request);
        }
        sleep_ms(30);
    }
    for (int k = 0; k < clients; k++) {
        uint64_t answer;
        read_all(conn[k], &answer, sizeof answer);
        close(conn[k]);
    }
    /* The clients may wait for room in the report queue before they see the end. */
    for (int left = clients; left > 0;) {
        char buf[64];
        while (recv(reports, buf, sizeof buf, 0) > 0)
            got_reports++;
        if (waitpid(-1, NULL, WNOHANG) > 0)
            left--;
        else
            sleep_ms(1);
    }
    char buf[64];
    while (recv(reports, buf, sizeof buf, 0) > 0)
        got_reports++;
    unlink(listen_addr.sun_path);
    printf("done reports=%u idle=%d\n", got_reports, idle);
    return 0;
}
