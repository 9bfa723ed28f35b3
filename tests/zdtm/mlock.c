/*
 * mlock - locked memory: a MAP_LOCKED mapping, 4 pages locked with mlock() in the middle of
 * a 16-page one, a region locked on fault (mlock2 MLOCK_ONFAULT), then mlockall(MCL_FUTURE).
 * After restore smaps must show the same ranges locked (VmFlags lo, lf for on-fault), the
 * unlocked pages unlocked, the data intact, and a new mapping must come out locked.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "zdtm.h"

#define PAGE 4096UL

/* The VmFlags of the smaps region starting at `addr` ("" if none). */
static void vmflags(void *addr, char *out, size_t n)
{
    out[0] = 0;
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f)
        return;
    char line[512];
    int in = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long s, e;
        if (sscanf(line, "%lx-%lx ", &s, &e) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            in = s == (uintptr_t)addr;
            continue;
        }
        if (in && !strncmp(line, "VmFlags:", 8)) {
            snprintf(out, n, " %.200s", line + 8);
            break;
        }
    }
    fclose(f);
}

static int has(const char *flags, const char *flag)
{
    char want[8];
    snprintf(want, sizeof want, " %s", flag);
    const char *p = flags;
    while ((p = strstr(p, want))) {
        char after = p[strlen(want)];
        if (after == ' ' || after == '\n' || after == 0)
            return 1;
        p++;
    }
    return 0;
}

static void expect(const char *what, void *addr, int lo, int lf)
{
    char flags[256];
    vmflags(addr, flags, sizeof flags);
    if (!flags[0])
        FAILED("%s: no region at %p", what, addr);
    else if (has(flags, "lo") != lo || has(flags, "lf") != lf)
        FAILED("%s: VmFlags%.200s want lo=%d lf=%d", what, flags, lo, lf);
}

int main(void)
{
    start();
    char *locked = mmap(NULL, 8 * PAGE, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED, -1, 0);
    char *part = mmap(NULL, 16 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *onfault = mmap(NULL, 8 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (locked == MAP_FAILED || part == MAP_FAILED || onfault == MAP_FAILED) {
        printf("FAIL set-up: mmap: %s\n", strerror(errno));
        return 1;
    }
    memset(locked, 0x5a, 8 * PAGE);
    memset(part, 0x6b, 16 * PAGE);
    onfault[0] = 1;
    if (mlock(part + 4 * PAGE, 4 * PAGE) ||
        syscall(SYS_mlock2, onfault, 8 * PAGE, MLOCK_ONFAULT) || mlockall(MCL_FUTURE)) {
        printf("FAIL set-up: mlock: %s\n", strerror(errno));
        return 1;
    }
    ready_then_wait();

    expect("MAP_LOCKED mapping", locked, 1, 0);
    expect("pages before the mlock()ed ones", part, 0, 0);
    expect("mlock()ed pages", part + 4 * PAGE, 1, 0);
    expect("pages after the mlock()ed ones", part + 8 * PAGE, 0, 0);
    expect("MLOCK_ONFAULT mapping", onfault, 1, 1);
    for (unsigned long i = 0; i < 8 * PAGE; i++)
        if (locked[i] != 0x5a || part[i] != 0x6b) {
            FAILED("data changed at byte %lu", i);
            break;
        }
    char *later = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (later == MAP_FAILED)
        FAILED("mmap after restore: %s", strerror(errno));
    else
        expect("a mapping made after the restore (MCL_FUTURE)", later, 1, 0);
    return verdict();
}
