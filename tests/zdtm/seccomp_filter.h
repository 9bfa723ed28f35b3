/*
 * seccomp_filter.h - filters for the seccomp conformance programs: one that makes
 * `nr` fail with `err`, and checks of a thread's filters from /proc.
 */
#ifndef MLCKPT_SECCOMP_FILTER_H
#define MLCKPT_SECCOMP_FILTER_H

#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Installs a filter failing syscall `nr` with errno `err`; 0 or -1. */
static int deny(int nr, int err, unsigned flags)
{
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | err),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof f / sizeof f[0], f};
    long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
    return r == 0 ? 0 : -1;
}

/* The errno syscall `nr` (with no arguments that matter) fails with, 0 if it works. */
static int blocked_with(int nr)
{
    errno = 0;
    long r = nr == SYS_getcpu ? syscall(nr, NULL, NULL, NULL) : syscall(nr, NULL);
    return r < 0 ? errno : 0;
}

/* `Seccomp_filters:` of this thread's status (-1 if unreadable). */
static int filter_count(void)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/self/task/%d/status", (int)gettid());
    FILE *f = fopen(path, "r");
    int n = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "Seccomp_filters: %d", &n) == 1)
            break;
    if (f)
        fclose(f);
    return n;
}

#endif
