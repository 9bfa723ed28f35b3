/*
 * process_prctl - process attributes: personality (ADDR_NO_RANDOMIZE | STICKY_TIMEOUTS),
 * oom_score_adj 345, PR_SET_THP_DISABLE (except where advised), PR_SET_DUMPABLE 0, PR_SET_NO_NEW_PRIVS and a
 * membarrier registration (PRIVATE_EXPEDITED). After restore each must read back the same,
 * and MEMBARRIER_CMD_PRIVATE_EXPEDITED must work (it fails unless registered).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/membarrier.h>
#include <stdio.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "zdtm.h"

#define PERSONA (ADDR_NO_RANDOMIZE | STICKY_TIMEOUTS)
#define GET_REGISTRATIONS (1 << 9)
/* PR_THP_DISABLE_EXCEPT_ADVISED (Linux 6.18; not in older headers). */
#define THP_EXCEPT_ADVISED (1 << 1)

static int oom_adj(void)
{
    FILE *f = fopen("/proc/self/oom_score_adj", "r");
    int v = -9999;
    if (f) {
        if (fscanf(f, "%d", &v) != 1)
            v = -9999;
        fclose(f);
    }
    return v;
}

int main(void)
{
    start();
    FILE *f = fopen("/proc/self/oom_score_adj", "w");
    if (!f || fprintf(f, "345\n") < 0 || fclose(f)) {
        printf("FAIL set-up: oom_score_adj: %s\n", strerror(errno));
        return 1;
    }
    if (personality(PERSONA) < 0 || prctl(PR_SET_THP_DISABLE, 1, THP_EXCEPT_ADVISED, 0, 0) ||
        prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) ||
        syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        return 1;
    }
    long regs = syscall(SYS_membarrier, GET_REGISTRATIONS, 0, 0);
    ready_then_wait();

    int p = personality(0xffffffff);
    if (p != PERSONA)
        FAILED("personality 0x%x, want 0x%x", p, PERSONA);
    if (oom_adj() != 345)
        FAILED("oom_score_adj %d, want 345", oom_adj());
    if (prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) != (1 | THP_EXCEPT_ADVISED))
        FAILED("PR_GET_THP_DISABLE says %d, want 3 (disabled except where advised)",
               prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0));
    if (prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0)
        FAILED("dumpable is %d, want 0", prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));
    if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1)
        FAILED("no_new_privs is off");
    long now = syscall(SYS_membarrier, GET_REGISTRATIONS, 0, 0);
    if (now != regs)
        FAILED("membarrier registrations 0x%lx, want 0x%lx", now, regs);
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0))
        FAILED("MEMBARRIER_CMD_PRIVATE_EXPEDITED: %s", strerror(errno));
    return verdict();
}
