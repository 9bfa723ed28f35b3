/*
 * seccomp_strict.c - a process in seccomp strict mode (SECCOMP_MODE_STRICT: only read,
 * write, _exit and sigreturn), which mlckpt cannot restore: its checkpoint must be refused.
 *
 * Output: "pid <pid>", "ready for strict mode"; then it waits for a line on stdin and exits.
 */
#define _GNU_SOURCE
#include <linux/seccomp.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("pid %d\nready for strict mode\n", getpid());
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT, 0, 0, 0))
        return 1;
    char c;
    while (read(0, &c, 1) == 1 && c != '\n')
        ;
    syscall(SYS_exit, 0);
    return 0;
}
