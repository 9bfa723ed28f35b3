/*
 * zdtm.h - the protocol every conformance program follows (see tests/conformance.rs):
 * `pid <N>`, set up the state, `ready`, wait for SIGUSR2 (sent to the restored process),
 * check the state, `PASS` or `FAIL <reason>`.
 */
#ifndef MLCKPT_ZDTM_H
#define MLCKPT_ZDTM_H

#include <errno.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <signal.h>
#include <stdio.h>
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


/* A byte pattern that depends on `k` and the position: data checked after a restore. */
__attribute__((unused)) static void fill_stream_pattern(unsigned char *buf, size_t n, int k)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = (unsigned char)(k * 77 + i * 5 + (i >> 6));
}

/* Reads `n` bytes (at most 8192) and compares them with fill_stream_pattern(k): 0 when equal,
 * -1 when missing, -2 when different. */
__attribute__((unused)) static int check_stream_pattern(int fd, size_t n, int k)
{
    static unsigned char got[8192], want[8192];
    if (n > sizeof got || read_full(fd, got, n))
        return -1;
    fill_stream_pattern(want, n, k);
    return memcmp(got, want, n) ? -2 : 0;
}

/* Two pipes for a parent and a child: `sync` (child -> parent), `go` (parent -> child). */
__attribute__((unused)) static void sync_pipes_or_fail(int sync[2], int go[2])
{
    if (pipe(sync) || pipe(go)) {
        printf("FAIL pipe: %s\n", strerror(errno));
        exit(1);
    }
}

/* State letter of /proc/PID/stat ('?' when unreadable). */
__attribute__((unused)) static char proc_state(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return '?';
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    return p && p[1] == ' ' ? p[2] : '?';
}

/* fork(), or `FAIL` and exit. */
__attribute__((unused)) static pid_t fork_or_fail(void)
{
    pid_t child = fork();
    if (child < 0) {
        printf("FAIL fork: %s\n", strerror(errno));
        exit(1);
    }
    return child;
}

/* Reaps `child` (killed first if a failure is recorded already), which must exit 0. */
__attribute__((unused)) static void reap_child(pid_t child)
{
    if (fail_msg[0])
        kill(child, SIGKILL);
    int st = 0;
    if (waitpid(child, &st, 0) != child)
        FAILED("waitpid: %s", strerror(errno));
    else if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
        FAILED("child status 0x%x", st);
}

#endif
