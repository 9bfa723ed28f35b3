/*
 * seccomp_threads - threads with different seccomp filters: a thread is created, the main
 * thread installs filter A (sysinfo fails with 77) with TSYNC, so both have it, then
 * filter B (getcpu fails with 78) for itself only, and sets no_new_privs. After restore
 * the main thread must have both filters, the other thread only A.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "zdtm.h"
#include "seccomp_filter.h"

static volatile int go;
static char thread_why[128];

static void *thread_main(void *arg)
{
    (void)arg;
    while (!go)
        usleep(10000);
    int a = blocked_with(SYS_sysinfo), b = blocked_with(SYS_getcpu);
    if (a != 77 || b != 0 || filter_count() != 1)
        snprintf(thread_why, sizeof thread_why, "sysinfo %d getcpu %d filters %d, want 77 0 1",
                 a, b, filter_count());
    return NULL;
}

int main(void)
{
    start();
    pthread_t t;
    if (pthread_create(&t, NULL, thread_main, NULL) ||
        deny(SYS_sysinfo, 77, SECCOMP_FILTER_FLAG_TSYNC) || deny(SYS_getcpu, 78, 0) ||
        prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        return 1;
    }
    ready_then_wait();
    int a = blocked_with(SYS_sysinfo), b = blocked_with(SYS_getcpu);
    if (a != 77 || b != 78 || filter_count() != 2)
        FAILED("main thread: sysinfo %d getcpu %d filters %d, want 77 78 2", a, b,
               filter_count());
    go = 1;
    pthread_join(t, NULL);
    if (thread_why[0])
        FAILED("other thread: %s", thread_why);
    return verdict();
}
