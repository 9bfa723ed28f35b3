/*
 * waiter.c - exercises: a zombie child kept unreaped across a checkpoint, and a parent
 * blocked in waitpid() on a live child. The root forks child B, which exits 7 at once, and
 * waits (without reaping, waitid WNOWAIT) until B is a zombie; then it forks child A, which
 * prints a tick every 30 ms and exits 3. The root blocks in waitpid(A), then checks that B
 * is still an unreaped zombie (waitid WEXITED|WNOHANG|WNOWAIT) and reaps it. The pids
 * waitpid returns must equal the ones fork returned (restore must keep child pids).
 *
 * Usage:  waiter <ticks>
 * Output: "pid <pid>"
 *         "tick <i> a"        i = 1..ticks (printed by A; the root prints nothing meanwhile)
 *         "A exited 3"
 *         "B zombie=1"
 *         "B exited 7"
 *         "same_pids=1"
 *         "done"
 * Any inconsistency: "FAIL ..." and exit 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TICK_MS 30

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* 1 when pid is an unreaped child that exited with `code` (checked without reaping it). */
static int is_zombie(pid_t pid, int code)
{
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) != 0)
        return 0;
    return si.si_pid == pid && si.si_code == CLD_EXITED && si.si_status == code;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2) {
        fprintf(stderr, "usage: waiter <ticks>\n");
        return 2;
    }
    long ticks = strtol(argv[1], NULL, 10);
    printf("pid %d\n", getpid());
    fflush(stdout);

    pid_t b = fork();
    if (b < 0) {
        perror("fork");
        return 1;
    }
    if (b == 0)
        _exit(7);
    /* Make sure B is a zombie before anything else happens (at most ~5 s). */
    for (int i = 0; !is_zombie(b, 7); i++) {
        if (i == 5000) {
            printf("FAIL B did not become a zombie\n");
            return 1;
        }
        sleep_ms(1);
    }

    pid_t a = fork();
    if (a < 0) {
        perror("fork");
        return 1;
    }
    if (a == 0) {
        for (long i = 1; i <= ticks; i++) {
            printf("tick %ld a\n", i);
            sleep_ms(TICK_MS);
        }
        fflush(stdout);
        _exit(3);
    }

    int st;
    pid_t wa;
    while ((wa = waitpid(a, &st, 0)) < 0 && errno == EINTR)
        ;
    if (wa < 0) {
        printf("FAIL waitpid(A): %s\n", strerror(errno));
        return 1;
    }
    if (!WIFEXITED(st)) {
        printf("FAIL A did not exit normally (status 0x%x)\n", st);
        return 1;
    }
    int acode = WEXITSTATUS(st);
    printf("A exited %d\n", acode);

    int bz = is_zombie(b, 7);
    printf("B zombie=%d\n", bz);

    pid_t wb;
    while ((wb = waitpid(b, &st, 0)) < 0 && errno == EINTR)
        ;
    if (wb < 0) {
        printf("FAIL waitpid(B): %s\n", strerror(errno));
        return 1;
    }
    if (!WIFEXITED(st)) {
        printf("FAIL B did not exit normally (status 0x%x)\n", st);
        return 1;
    }
    int bcode = WEXITSTATUS(st);
    printf("B exited %d\n", bcode);

    int same = wa == a && wb == b;
    printf("same_pids=%d\n", same);
    if (acode != 3 || bcode != 7 || !bz || !same) {
        printf("FAIL a=%d b=%d zombie=%d same_pids=%d\n", acode, bcode, bz, same);
        return 1;
    }
    printf("done\n");
    return 0;
}
