/*
 * escapee.c - a job that loses a process from its tree: the root forks a middle process,
 * which forks a grandchild and exits; the grandchild (an orphan now, handed to the
 * supervisor, the job's child subreaper) lives on until the root exits. A checkpoint must
 * not leave it out silently: it fails naming it, and the job runs on.
 *
 * Usage:  escapee <ticks>
 * Output: "pid <pid>", "tick <i>" every 30 ms, "done".
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    long ticks = argc > 1 ? strtol(argv[1], NULL, 10) : 60;
    printf("pid %d\n", getpid());
    int alive[2];
    if (pipe(alive))
        return 1;
    pid_t middle = fork();
    if (middle == 0) {
        if (fork() == 0) {
            char c;
            close(alive[1]);
            /* Ends when the root does (end of file). */
            while (read(alive[0], &c, 1) > 0)
                ;
            _exit(0);
        }
        _exit(0);
    }
    close(alive[0]);
    waitpid(middle, NULL, 0);
    for (long i = 1; i <= ticks; i++) {
        struct timespec ts = {0, 30 * 1000000L};
        nanosleep(&ts, NULL);
        printf("tick %ld\n", i);
    }
    printf("done\n");
    return 0;
}
