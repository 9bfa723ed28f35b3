/*
 * pipe_flags - fd flags and pipe attributes: O_NONBLOCK on the read end (not on the write
 * end), the pipe's capacity raised to 16 KiB (F_SETPIPE_SZ), FD_CLOEXEC on the read end
 * and not on the write end. After restore the flags must be the same, a read of the empty
 * pipe must fail with EAGAIN, data must flow, and exactly 16 KiB must fit in the pipe.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t got_usr2;
static void on_usr2(int sig) { (void)sig; got_usr2 = 1; }

/* Line-buffered stdout, the SIGUSR2 handler, and the first line `pid <N>`. */
static void start(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr2;
    sigaction(SIGUSR2, &sa, NULL);
    printf("pid %d\n", (int)getpid());
}

/* Prints `ready`, then waits (across a checkpoint and restore) for SIGUSR2. */
static void ready_then_wait(void)
{
    printf("ready\n");
    while (!got_usr2) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

static char fail_msg[512];

/* Records the first failure. */
#define FAILED(...)                                                     \
    do {                                                                \
        if (!fail_msg[0])                                               \
            snprintf(fail_msg, sizeof fail_msg, __VA_ARGS__);           \
    } while (0)

/* Prints the verdict; the exit status of main. */
static int verdict(void)
{
    if (fail_msg[0]) {
        printf("FAIL %s\n", fail_msg);
        return 1;
    }
    printf("PASS\n");
    return 0;
}

__attribute__((unused)) static int write_full(int fd, const void *buf, size_t n)
{
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, (const char *)buf + done, n - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        done += (size_t)w;
    }
    return 0;
}

__attribute__((unused)) static int read_full(int fd, void *buf, size_t n)
{
    size_t done = 0;
    while (done < n) {
        ssize_t r = read(fd, (char *)buf + done, n - done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        done += (size_t)r;
    }
    return 0;
}

#define SIZE 16384

int main(void)
{
    start();
    int p[2];
    if (pipe(p)) {
        printf("FAIL pipe: %s\n", strerror(errno));
        return 1;
    }
    if (fcntl(p[0], F_SETFL, O_NONBLOCK) || fcntl(p[0], F_SETFD, FD_CLOEXEC) ||
        fcntl(p[1], F_SETPIPE_SZ, SIZE) != SIZE) {
        printf("FAIL set-up: %s\n", strerror(errno));
        return 1;
    }
    ready_then_wait();

    int fl0 = fcntl(p[0], F_GETFL), fl1 = fcntl(p[1], F_GETFL);
    int fd0 = fcntl(p[0], F_GETFD), fd1 = fcntl(p[1], F_GETFD);
    if (fl0 < 0 || fl1 < 0 || fd0 < 0 || fd1 < 0)
        FAILED("fcntl: %s", strerror(errno));
    if ((fl0 & O_ACCMODE) != O_RDONLY || (fl1 & O_ACCMODE) != O_WRONLY)
        FAILED("access modes read 0%o write 0%o", fl0 & O_ACCMODE, fl1 & O_ACCMODE);
    if (!(fl0 & O_NONBLOCK))
        FAILED("read end lost O_NONBLOCK (flags 0%o)", fl0);
    if (fl1 & O_NONBLOCK)
        FAILED("write end gained O_NONBLOCK (flags 0%o)", fl1);
    if (fd0 != FD_CLOEXEC)
        FAILED("read end FD flags %d, expected FD_CLOEXEC", fd0);
    if (fd1 != 0)
        FAILED("write end FD flags %d, expected 0", fd1);
    int sz0 = fcntl(p[0], F_GETPIPE_SZ), sz1 = fcntl(p[1], F_GETPIPE_SZ);
    if (sz0 != SIZE || sz1 != SIZE)
        FAILED("pipe size %d/%d, expected %d", sz0, sz1, SIZE);
    char c;
    ssize_t r = read(p[0], &c, 1);
    if (!(r < 0 && errno == EAGAIN))
        FAILED("read of the empty non-blocking end: %zd (%s)", r, r < 0 ? strerror(errno) : "-");
    if (write(p[1], "xyz", 3) != 3)
        FAILED("write: %s", strerror(errno));
    char buf[8] = "";
    r = read(p[0], buf, sizeof buf);
    if (r != 3 || memcmp(buf, "xyz", 3))
        FAILED("read back %zd bytes", r);
    /* the capacity: exactly SIZE bytes fit */
    if (fcntl(p[1], F_SETFL, fl1 | O_NONBLOCK))
        FAILED("set O_NONBLOCK on the write end: %s", strerror(errno));
    static char big[SIZE * 2];
    size_t total = 0;
    for (;;) {
        ssize_t w = write(p[1], big, 1024);
        if (w < 0) {
            if (errno != EAGAIN)
                FAILED("filling write: %s", strerror(errno));
            break;
        }
        total += (size_t)w;
        if (total > sizeof big)
            break;
    }
    if (total != SIZE)
        FAILED("the pipe took %zu bytes, expected %d", total, SIZE);
    return verdict();
}
