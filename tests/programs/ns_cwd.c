/*
 * ns_cwd.c - exercises: two things a checkpoint must refuse, held at once: an fd on
 * /proc/self/ns/net (a namespace) and a working directory that was removed
 * (./mlckpt-removed-cwd-<pid>, created, entered, then rmdir'ed from its parent).
 * Every tick checks that both are still as set up (the fd still a `net:[...]` namespace,
 * the cwd still the removed directory), so a refused checkpoint that disturbed either shows.
 *
 * Usage:  ns_cwd <ticks>
 * Output: "pid <pid>"
 *         "tick <i> pid=<pid> ns=<ok|changed> cwd=<ok|changed>"
 *         "done ticks=<n>"
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TICK_MS 50

static void die(const char *what)
{
    printf("ERROR %s: %s\n", what, strerror(errno));
    exit(1);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int link_of(const char *path, char *out, size_t size)
{
    ssize_t n = readlink(path, out, size - 1);
    if (n < 0)
        return -1;
    out[n] = 0;
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2) {
        fprintf(stderr, "usage: ns_cwd <ticks>\n");
        return 2;
    }
    long ticks = strtol(argv[1], NULL, 10);
    printf("pid %d\n", (int)getpid());

    int ns = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    if (ns < 0)
        die("open /proc/self/ns/net");
    char ns_proc[64], ns_was[256], dir[64], cwd_was[4096];
    snprintf(ns_proc, sizeof ns_proc, "/proc/self/fd/%d", ns);
    snprintf(dir, sizeof dir, "mlckpt-removed-cwd-%d", (int)getpid());
    if (link_of(ns_proc, ns_was, sizeof ns_was) || strncmp(ns_was, "net:[", 5))
        die("the namespace fd");
    if (mkdir(dir, 0700) || chdir(dir))
        die("mkdir/chdir");
    char parent_entry[128];
    snprintf(parent_entry, sizeof parent_entry, "../%s", dir);
    if (rmdir(parent_entry))
        die("rmdir the working directory");
    if (link_of("/proc/self/cwd", cwd_was, sizeof cwd_was) || !strstr(cwd_was, " (deleted)"))
        die("the removed working directory");

    for (long t = 1; t <= ticks; t++) {
        char ns_now[256] = "", cwd_now[4096] = "";
        struct stat st;
        int ns_ok = !link_of(ns_proc, ns_now, sizeof ns_now) && !strcmp(ns_now, ns_was);
        int cwd_ok = !link_of("/proc/self/cwd", cwd_now, sizeof cwd_now) &&
                     !strcmp(cwd_now, cwd_was) && !stat(".", &st) && st.st_nlink == 0;
        printf("tick %ld pid=%d ns=%s cwd=%s\n", t, (int)getpid(), ns_ok ? "ok" : "changed",
               cwd_ok ? "ok" : "changed");
        sleep_ms(TICK_MS);
    }
    printf("done ticks=%ld\n", ticks);
    return 0;
}
