/*
 * sleeper.c - exercises: syscall restart. Every tick blocks in one long syscall, so a
 * checkpoint almost always catches the process inside it; the restored process must
 * finish that call the way the kernel would have:
 *   nanosleep  relative nanosleep, retried with the remaining time on EINTR (the kernel
 *              reports -ERESTART_RESTARTBLOCK, which a restore turns into EINTR);
 *   select     select() with only a timeout (-ERESTARTNOHAND: re-run with the remaining
 *              time the kernel wrote back; must still return 0, not EINTR);
 *   read       read() of one byte from stdin, which must be a pipe the caller writes to
 *              now and then (-ERESTARTSYS: re-run, must return 1).
 * For nanosleep and select the tick also checks that the full time elapsed (CLOCK_MONOTONIC).
 *
 * Usage:  sleeper <nanosleep|select|read> <ticks> <ms>
 * Output: "pid <pid>"
 *         "tick <i> pid=<pid> mode=<mode> ret=<return value> err=<errno name or 0> full=<0|1>"
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 4) {
        fprintf(stderr, "usage: sleeper <nanosleep|select|read> <ticks> <ms>\n");
        return 2;
    }
    const char *mode = argv[1];
    long ticks = strtol(argv[2], NULL, 10);
    long ms = strtol(argv[3], NULL, 10);
    if (strcmp(mode, "nanosleep") && strcmp(mode, "select") && strcmp(mode, "read")) {
        fprintf(stderr, "sleeper: unknown mode %s\n", mode);
        return 2;
    }
    printf("pid %d\n", getpid());
    for (long t = 0; t < ticks; t++) {
        long long start = now_ns();
        long ret;
        int err = 0;
        errno = 0;
        if (!strcmp(mode, "nanosleep")) {
            struct timespec req = {ms / 1000, (ms % 1000) * 1000000L}, rem;
            while ((ret = nanosleep(&req, &rem)) == -1 && errno == EINTR)
                req = rem;
        } else if (!strcmp(mode, "select")) {
            struct timeval tv = {ms / 1000, (ms % 1000) * 1000L};
            ret = select(0, NULL, NULL, NULL, &tv);
        } else {
            char c;
            ret = read(0, &c, 1);
        }
        if (ret < 0)
            err = errno;
        int full = 1;
        if (strcmp(mode, "read"))
            full = now_ns() - start >= ms * 1000000LL - 1000000LL; /* 1 ms of clock slack */
        printf("tick %ld pid=%d mode=%s ret=%ld err=%s full=%d\n", t, getpid(), mode, ret,
               err ? strerrorname_np(err) : "0", full);
    }
    return 0;
}
