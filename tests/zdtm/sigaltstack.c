/*
 * sigaltstack - an alternate signal stack (64 KiB, static) and a SIGUSR1 handler with
 * SA_ONSTACK. After restore sigaltstack(NULL, &old) must give the same ss_sp and ss_size,
 * not SS_DISABLE or SS_ONSTACK, and a raised SIGUSR1 must run on that stack.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

#define ALT_SIZE (64 * 1024)
static char alt[ALT_SIZE] __attribute__((aligned(16)));
static volatile sig_atomic_t usr1_count, on_alt;

static void on_usr1(int sig)
{
    (void)sig;
    char here;
    uintptr_t p = (uintptr_t)&here;
    on_alt = p >= (uintptr_t)alt && p < (uintptr_t)alt + ALT_SIZE;
    usr1_count++;
}

int main(void)
{
    start();
    stack_t ss;
    memset(&ss, 0, sizeof ss);
    ss.ss_sp = alt;
    ss.ss_size = ALT_SIZE;
    ss.ss_flags = 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_ONSTACK;
    if (sigaltstack(&ss, NULL) || sigaction(SIGUSR1, &sa, NULL)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        return 1;
    }
    ready_then_wait();

    stack_t old;
    memset(&old, 0, sizeof old);
    if (sigaltstack(NULL, &old))
        FAILED("sigaltstack: %s", strerror(errno));
    else if (old.ss_sp != (void *)alt || old.ss_size != ALT_SIZE)
        FAILED("alternate stack %p+%zu, expected %p+%d", old.ss_sp, old.ss_size, (void *)alt,
               ALT_SIZE);
    else if (old.ss_flags != 0)
        FAILED("alternate stack flags 0x%x, expected 0", old.ss_flags);
    raise(SIGUSR1);
    if (usr1_count != 1)
        FAILED("the SIGUSR1 handler ran %d times", (int)usr1_count);
    else if (!on_alt)
        FAILED("the SA_ONSTACK handler did not run on the alternate stack");
    return verdict();
}
