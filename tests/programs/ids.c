/*
 * ids.c - exercises: credentials. Prints its real/effective/saved user and group ids, its
 * supplementary groups and its effective capabilities every tick, from every thread: a
 * restore must give the job back the user it ran as, not the restorer's (root's).
 *
 * Usage:  ids <ticks>
 * Output: "pid <pid>"
 *         "tick <i> pid=<pid> uid=<r>,<e>,<s> gid=<r>,<e>,<s> groups=<n> capeff=<hex> thread_uid=<e>"
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile unsigned thread_euid = ~0u;

static unsigned long long cap_effective(void)
{
    FILE *f = fopen("/proc/thread-self/status", "r");
    char line[256];
    unsigned long long caps = ~0ull;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "CapEff: %llx", &caps) == 1)
            break;
    if (f)
        fclose(f);
    return caps;
}

static void *worker(void *arg)
{
    (void)arg;
    for (;;) {
        /* The raw syscall: glibc's geteuid is the same, but says what is meant. */
        thread_euid = geteuid();
        struct timespec t = {0, 5000000L};
        nanosleep(&t, NULL);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int ticks = argc > 1 ? atoi(argv[1]) : 40;
    pthread_t th;
    pthread_create(&th, NULL, worker, NULL);
    printf("pid %d\n", getpid());
    fflush(stdout);
    for (int i = 0; i < ticks; i++) {
        uid_t r, e, s;
        gid_t gr, ge, gs;
        getresuid(&r, &e, &s);
        getresgid(&gr, &ge, &gs);
        int n = getgroups(0, NULL);
        struct timespec t = {0, 40000000L};
        nanosleep(&t, NULL);
        printf("tick %d pid=%d uid=%u,%u,%u gid=%u,%u,%u groups=%d capeff=%llx thread_uid=%u\n", i,
               getpid(), r, e, s, gr, ge, gs, n, cap_effective(), thread_euid);
        fflush(stdout);
    }
    return 0;
}
