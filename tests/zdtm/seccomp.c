/*
 * seccomp - a seccomp filter shared by two threads: a thread is created, then the main
 * thread installs a filter (sysinfo fails with errno 77) with SECCOMP_FILTER_FLAG_TSYNC |
 * SECCOMP_FILTER_FLAG_LOG, then drops its privileges (uids 1001, no capabilities, no
 * no_new_privs: it could not install a filter any more). After restore both threads must
 * still have exactly that one filter: sysinfo fails with 77 in each, getpid works.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "zdtm.h"
#include "seccomp_filter.h"

static volatile int go, checked;
static char thread_why[128];

static void check(char *why, size_t n)
{
    int e = blocked_with(SYS_sysinfo);
    if (e != 77)
        snprintf(why, n, "sysinfo fails with %d, want 77", e);
    else if (filter_count() != 1)
        snprintf(why, n, "%d filters, want 1", filter_count());
    else if (getpid() <= 0)
        snprintf(why, n, "getpid broke");
}

static void *thread_main(void *arg)
{
    (void)arg;
    while (!go)
        usleep(10000);
    check(thread_why, sizeof thread_why);
    checked = 1;
    return NULL;
}

int main(void)
{
    start();
    pthread_t t;
    if (pthread_create(&t, NULL, thread_main, NULL) ||
        deny(SYS_sysinfo, 77, SECCOMP_FILTER_FLAG_TSYNC | SECCOMP_FILTER_FLAG_LOG) ||
        setresgid(1001, 1001, 1001) || setresuid(1001, 1001, 1001)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        return 1;
    }
    ready_then_wait();
    char why[128] = "";
    check(why, sizeof why);
    if (why[0])
        FAILED("main thread: %s", why);
    go = 1;
    pthread_join(t, NULL);
    if (thread_why[0])
        FAILED("other thread: %s", thread_why);
    return verdict();
}
