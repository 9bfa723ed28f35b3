/*
 * treeflags.c - per-process state of a tree that only the processes themselves can read,
 * and a stopped member: the root is a child subreaper (PR_SET_CHILD_SUBREAPER); child A
 * asked for SIGUSR1 when its parent dies (PR_SET_PDEATHSIG) and reports both its own and
 * its view of the tree each tick over a pipe; child B stopped itself with SIGSTOP and
 * stays stopped until the root sends SIGCONT at the end.
 *
 * Usage:  treeflags <ticks>
 * Output: "pid <pid>"
 *         "tick <i> subreaper=<0|1> a_pdeathsig=<signo> a_ppid_ok=<0|1> b_stopped=<0|1>"
 *         "b exited 5", "a exited 0", "done"
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char state_of(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return '?';
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    return p && p[1] == ' ' ? p[2] : '?';
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    long ticks = argc > 1 ? strtol(argv[1], NULL, 10) : 60;
    printf("pid %d\n", getpid());
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    pid_t root = getpid();
    int ask[2], answer[2];
    if (pipe(ask) || pipe(answer))
        return 1;
    pid_t a = fork();
    if (a == 0) {
        close(ask[1]);
        close(answer[0]);
        prctl(PR_SET_PDEATHSIG, SIGUSR1);
        signal(SIGUSR1, SIG_IGN);
        char c;
        while (read(ask[0], &c, 1) == 1) {
            int sig = 0;
            prctl(PR_GET_PDEATHSIG, &sig);
            int report[2] = {sig, getppid() == root};
            if (write(answer[1], report, sizeof report) != sizeof report)
                _exit(1);
        }
        _exit(0);
    }
    pid_t b = fork();
    if (b == 0) {
        raise(SIGSTOP);
        _exit(5);
    }
    while (state_of(b) != 'T')
        usleep(1000);
    for (long i = 1; i <= ticks; i++) {
        struct timespec ts = {0, 30 * 1000000L};
        nanosleep(&ts, NULL);
        int reaper = 0;
        prctl(PR_GET_CHILD_SUBREAPER, &reaper);
        int report[2] = {0, 0};
        if (write(ask[1], "?", 1) != 1 || read(answer[0], report, sizeof report) != sizeof report)
            return 1;
        printf("tick %ld subreaper=%d a_pdeathsig=%d a_ppid_ok=%d b_stopped=%d\n", i, reaper,
               report[0], report[1], state_of(b) == 'T');
    }
    kill(b, SIGCONT);
    int status;
    waitpid(b, &status, 0);
    printf("b exited %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    close(ask[1]);
    waitpid(a, &status, 0);
    printf("a exited %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    printf("done\n");
    return 0;
}
