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

#include "zdtm.h"

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
