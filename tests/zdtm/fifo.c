/*
 * fifo - a named pipe (mkfifo) from the parent to a child, each opened by name, holds 10 KiB
 * of unread data at checkpoint time (the child is blocked reading another pipe). After restore the parent adds 2 KiB
 * more and closes its end; the child reads everything up to EOF and reports the byte count
 * and a checksum over a second pipe.
 */
#define _GNU_SOURCE
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
    pid_t child = fork();
    if (child < 0) {
        printf("FAIL fork: %s\n", strerror(errno));
        return 1;
    }
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
    unlink(path);
    uint64_t report[2] = {0, 0};
    if (read_full(back[0], report, sizeof report))
        FAILED("no report from the child");
    uint64_t want = fnv(1469598103934665603ULL, all, sizeof all);
    if (report[0] != sizeof all)
        FAILED("child read %llu bytes, expected %zu", (unsigned long long)report[0], sizeof all);
    if (report[1] != want)
        FAILED("checksum %016llx, expected %016llx", (unsigned long long)report[1],
               (unsigned long long)want);
    if (fail_msg[0])
        kill(child, SIGKILL);
    int st = 0;
    if (waitpid(child, &st, 0) != child)
        FAILED("waitpid: %s", strerror(errno));
    else if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
        FAILED("child status 0x%x", st);
    return verdict();
}
