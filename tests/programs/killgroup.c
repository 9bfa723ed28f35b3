/*
 * killgroup.c - exercises: a process group of its own (root = group leader) with two
 * children, a signal sent to the whole group with kill(0, ...), signal handlers inherited
 * over fork, and report/control pipes between root and children.
 * The root calls setpgid(0, 0), installs a SIGUSR2 handler (SA_RESTART) and forks two
 * children. Each child sleeps 30 ms per tick; when its handler has run it writes its index
 * (one byte) to the report pipe; when the control pipe reaches EOF it exits 0. The root
 * prints a tick every 30 ms, checking that it still leads its own group and that both
 * children are in it; at tick ticks/2 and at the last tick it sends SIGUSR2 to the group
 * and blocks until both children reported. Only the root prints.
 * A restore that loses the process group or the handlers shows as 0 flags or a FAIL (the
 * default action of SIGUSR2 would kill a child).
 *
 * Usage:  killgroup <ticks>          (ticks >= 2)
 * Output: "pid <pid>"
 *         "tick <i> pgid_is_self=1 kids_in_group=1"     i = 1..ticks
 *         "group signal <n> reached 2 children root_got_it=1"  n = 1, 2 (after ticks ticks/2, ticks)
 *         "children exited 0 0"
 *         "done"
 * Any inconsistency: "FAIL ..." and exit 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TICK_MS 30
#define KIDS 2

static volatile sig_atomic_t got_usr2;

static void on_usr2(int sig)
{
    (void)sig;
    got_usr2 = 1;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL); /* a signal may cut it short: the callers poll */
}

static void child(int index, int report_w, int ctl_r)
{
    for (;;) {
        sleep_ms(TICK_MS);
        if (got_usr2) {
            got_usr2 = 0;
            char c = (char)index;
            while (write(report_w, &c, 1) < 0 && errno == EINTR)
                ;
        }
        char c;
        ssize_t n = read(ctl_r, &c, 1);
        if (n == 0)
            _exit(0);
        if (n > 0)
            _exit(4); /* the root never writes to the control pipe */
        if (errno != EAGAIN && errno != EINTR)
            _exit(5);
    }
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2) {
        fprintf(stderr, "usage: killgroup <ticks>\n");
        return 2;
    }
    long ticks = strtol(argv[1], NULL, 10);
    if (ticks < 2) {
        fprintf(stderr, "killgroup: ticks must be >= 2\n");
        return 2;
    }
    if (setpgid(0, 0) != 0 && getpgrp() != getpid()) {
        perror("setpgid");
        return 1;
    }
    printf("pid %d\n", getpid());

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr2;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR2, &sa, NULL) != 0) {
        perror("sigaction");
        return 1;
    }

    int report[2], ctl[2];
    if (pipe(report) != 0 || pipe(ctl) != 0) {
        perror("pipe");
        return 1;
    }
    fflush(stdout);
    pid_t kids[KIDS];
    for (int k = 0; k < KIDS; k++) {
        kids[k] = fork();
        if (kids[k] < 0) {
            perror("fork");
            return 1;
        }
        if (kids[k] == 0) {
            close(report[0]);
            close(ctl[1]);
            fcntl(ctl[0], F_SETFL, O_NONBLOCK);
            child(k, report[1], ctl[0]);
        }
    }
    close(report[1]);
    close(ctl[0]);

    int signals = 0;
    for (long i = 1; i <= ticks; i++) {
        sleep_ms(TICK_MS);
        int self = getpgrp() == getpid();
        int in_group = 1;
        for (int k = 0; k < KIDS; k++)
            in_group &= getpgid(kids[k]) == getpid();
        printf("tick %ld pgid_is_self=%d kids_in_group=%d\n", i, self, in_group);
        if (!self || !in_group) {
            printf("FAIL process group lost at tick %ld\n", i);
            return 1;
        }
        if (i == ticks / 2 || i == ticks) {
            signals++;
            got_usr2 = 0;
            if (kill(0, SIGUSR2) != 0) {
                printf("FAIL kill(0, SIGUSR2): %s\n", strerror(errno));
                return 1;
            }
            char got[KIDS];
            size_t have = 0;
            while (have < KIDS) {
                ssize_t n = read(report[0], got + have, KIDS - have);
                if (n < 0 && errno == EINTR)
                    continue;
                if (n <= 0) {
                    printf("FAIL group signal %d: report pipe %s after %zu reports\n", signals,
                           n == 0 ? "EOF" : strerror(errno), have);
                    return 1;
                }
                have += (size_t)n;
            }
            int seen[KIDS] = {0};
            for (int k = 0; k < KIDS; k++)
                if (got[k] >= 0 && got[k] < KIDS)
                    seen[(int)got[k]]++;
            int reached = 0;
            for (int k = 0; k < KIDS; k++)
                reached += seen[k] == 1;
            int root_got = got_usr2;
            got_usr2 = 0;
            printf("group signal %d reached %d children root_got_it=%d\n", signals, reached,
                   root_got);
            if (reached != KIDS || !root_got) {
                printf("FAIL group signal %d\n", signals);
                return 1;
            }
        }
    }

    close(ctl[1]);
    int codes[KIDS], ok = 1;
    for (int k = 0; k < KIDS; k++) {
        int st;
        pid_t w;
        while ((w = waitpid(kids[k], &st, 0)) < 0 && errno == EINTR)
            ;
        codes[k] = w != kids[k] ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        ok &= codes[k] == 0;
    }
    printf("children exited %d %d\n", codes[0], codes[1]);
    if (!ok) {
        printf("FAIL children\n");
        return 1;
    }
    printf("done\n");
    return 0;
}
