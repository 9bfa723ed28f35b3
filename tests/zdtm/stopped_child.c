/*
 * stopped_child - a child that stopped itself with SIGSTOP (the parent saw the stop with
 * WUNTRACED). After restore the child must still be stopped (state T in /proc/PID/stat);
 * after SIGCONT it must run on and exit with status 7.
 */
#define _GNU_SOURCE
#include <sys/wait.h>
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
/* State letter of /proc/PID/stat ('?' when unreadable). */
static char proc_state(pid_t pid)
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

int main(void)
{
    start();
    pid_t child = fork();
    if (child < 0) {
        printf("FAIL fork: %s\n", strerror(errno));
        return 1;
    }
    if (child == 0) {
        raise(SIGSTOP);
        _exit(7);
    }
    int st = 0;
    if (waitpid(child, &st, WUNTRACED) != child || !WIFSTOPPED(st)) {
        printf("FAIL the child did not stop: status 0x%x\n", st);
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
        return 1;
    }
    ready_then_wait();

    char s = proc_state(child);
    if (s != 'T')
        FAILED("child %d is in state %c after the restore, expected T (stopped)", (int)child, s);
    if (kill(child, SIGCONT))
        FAILED("SIGCONT: %s", strerror(errno));
    /* bounded wait for the exit */
    pid_t w = 0;
    for (int i = 0; i < 500 && w == 0; i++) {
        w = waitpid(child, &st, WNOHANG);
        if (w == 0) {
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    if (w == 0) {
        FAILED("the child did not exit within 5 s of SIGCONT (state %c)", proc_state(child));
        kill(child, SIGKILL);
        waitpid(child, &st, 0);
    } else if (w != child) {
        FAILED("waitpid: %s", strerror(errno));
    } else if (!(WIFEXITED(st) && WEXITSTATUS(st) == 7)) {
        FAILED("child status 0x%x, expected exit 7", st);
    }
    return verdict();
}
