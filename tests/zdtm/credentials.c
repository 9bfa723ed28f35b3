/*
 * credentials - a process that changed its ids: supplementary groups {5, 6, 7}, gids
 * 1001/1002/1003, uids 1001/1002/1003 (so a prlimit from outside is refused: its limits
 * are read another way), a lowered RLIMIT_NOFILE and RLIMIT_CORE. After restore the ids,
 * groups and limits must be the same, and the capability sets empty as before.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include "zdtm.h"

static int ids_ok(const char **why)
{
    uid_t r, e, s;
    gid_t gr, ge, gs;
    gid_t groups[16];
    getresuid(&r, &e, &s);
    getresgid(&gr, &ge, &gs);
    int n = getgroups(16, groups);
    if (r != 1001 || e != 1002 || s != 1003) {
        *why = "uids";
        return 0;
    }
    if (gr != 1001 || ge != 1002 || gs != 1003) {
        *why = "gids";
        return 0;
    }
    if (n != 3 || groups[0] != 5 || groups[1] != 6 || groups[2] != 7) {
        *why = "groups";
        return 0;
    }
    return 1;
}

int main(void)
{
    start();
    struct rlimit nofile = {200, 300}, core = {0, 4096};
    gid_t groups[] = {5, 6, 7};
    if (setrlimit(RLIMIT_NOFILE, &nofile) || setrlimit(RLIMIT_CORE, &core) ||
        setgroups(3, groups) || setresgid(1001, 1002, 1003) || setresuid(1001, 1002, 1003)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        return 1;
    }
    ready_then_wait();

    const char *why = "";
    if (!ids_ok(&why))
        FAILED("%s changed", why);
    struct rlimit a, b;
    getrlimit(RLIMIT_NOFILE, &a);
    getrlimit(RLIMIT_CORE, &b);
    if (a.rlim_cur != 200 || a.rlim_max != 300)
        FAILED("RLIMIT_NOFILE %lu/%lu, want 200/300", (unsigned long)a.rlim_cur,
               (unsigned long)a.rlim_max);
    if (b.rlim_cur != 0 || b.rlim_max != 4096)
        FAILED("RLIMIT_CORE %lu/%lu, want 0/4096", (unsigned long)b.rlim_cur,
               (unsigned long)b.rlim_max);
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "CapEff:", 7) || !strncmp(line, "CapPrm:", 7)) {
            unsigned long long caps = 0;
            sscanf(line + 7, "%llx", &caps);
            if (caps)
                FAILED("%.6s is %llx, want 0", line, caps);
        }
    if (f)
        fclose(f);
    return verdict();
}
