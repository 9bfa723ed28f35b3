/* pipe_data.h - the body of pipe_data.c and fifo.c (FIFO). */#define _GNU_SOURCE
#include <stdint.h>
#include <sys/wait.h>
#include <errno.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

#define OLD 10240
#define NEW 2048

static uint64_t fnv(uint64_t h, const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

int main(void)
{
    start();
    int data[2], back[2], go[2];
#ifdef FIFO
    char path[96];
    snprintf(path, sizeof path, "/tmp/mlckpt-zdtm-fifo-%d", (int)getpid());
    unlink(path);
    if (mkfifo(path, 0600) || (data[0] = open(path, O_RDONLY | O_NONBLOCK)) < 0 ||
        (data[1] = open(path, O_WRONLY)) < 0 || fcntl(data[0], F_SETFL, 0) ||
        pipe(back) || pipe(go)) {
        printf("FAIL fifo %s: %s\n", path, strerror(errno));
        unlink(path);
        return 1;
    }
#else
    if (pipe(data) || pipe(back) || pipe(go)) {
        printf("FAIL pipe: %s\n", strerror(errno));
        return 1;
    }
#endif
    pid_t child = fork_or_fail();
    if (child == 0) {
        close(data[1]);
        close(back[0]);
        close(go[1]);
        char c;
        if (read_full(go[0], &c, 1))
            _exit(2);
        uint64_t h = 1469598103934665603ULL, total = 0;
        unsigned char buf[4096];
        for (;;) {
            ssize_t r = read(data[0], buf, sizeof buf);
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0)
                _exit(3);
            if (r == 0)
                break;
            h = fnv(h, buf, (size_t)r);
            total += (uint64_t)r;
        }
        uint64_t report[2] = {total, h};
        _exit(write_full(back[1], report, sizeof report) ? 4 : 0);
    }
    close(data[0]);
    close(back[1]);
    close(go[0]);

    static unsigned char all[OLD + NEW];
    for (size_t i = 0; i < sizeof all; i++)
        all[i] = (unsigned char)(i * 13 + (i >> 8));
    if (write_full(data[1], all, OLD)) {
        printf("FAIL write old data: %s\n", strerror(errno));
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
        return 1;
    }
    ready_then_wait();

    if (write_full(data[1], all + OLD, NEW))
        FAILED("write new data: %s", strerror(errno));
    close(data[1]);
    if (write_full(go[1], "g", 1))
        FAILED("write go: %s", strerror(errno));
#ifdef FIFO
    unlink(path);
#endif
    uint64_t report[2] = {0, 0};
    if (read_full(back[0], report, sizeof report))
        FAILED("no report from the child");
    uint64_t want = fnv(1469598103934665603ULL, all, sizeof all);
    if (report[0] != sizeof all)
        FAILED("child read %llu bytes, expected %zu", (unsigned long long)report[0], sizeof all);
    if (report[1] != want)
        FAILED("checksum %016llx, expected %016llx", (unsigned long long)report[1],
               (unsigned long long)want);
    reap_child(child);
    return verdict();
}
