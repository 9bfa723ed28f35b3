/*
 * forker.c - a job that creates and reaps short-lived children all the time, so that a
 * checkpoint catches children being born, running, exited but not yet reaped (zombies)
 * and reaped: every tick the root forks 20 children, child k exits with status k % 7 at
 * once, and the root reaps each with waitpid and adds up the statuses. A restore that
 * loses a zombie, keeps one already reaped or mixes up statuses changes the sums.
 *
 * Usage:  forker <ticks>
 * Output: "pid <pid>", "tick <i> sum=<total of exit statuses> reaped=<n>" every 30 ms, "done".
 */
#define _GNU_SOURCE
#include <errno.h>
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
    long sum = 0, reaped = 0;
    for (long i = 1; i <= ticks; i++) {
        pid_t kids[20];
        for (int k = 0; k < 20; k++) {
            kids[k] = fork();
            if (kids[k] == 0)
                _exit(k % 7);
            if (kids[k] < 0) {
                printf("FAIL fork %d\n", errno);
                return 1;
            }
        }
        for (int k = 0; k < 20; k++) {
            int status;
            pid_t r;
            while ((r = waitpid(kids[k], &status, 0)) < 0 && errno == EINTR)
                ;
            if (r != kids[k] || !WIFEXITED(status)) {
                printf("FAIL waitpid %d status 0x%x errno %d\n", (int)r, status, errno);
                return 1;
            }
            sum += WEXITSTATUS(status);
            reaped++;
        }
        if (waitpid(-1, NULL, WNOHANG) != -1 || errno != ECHILD) {
            printf("FAIL an unexpected child at tick %ld\n", i);
            return 1;
        }
        struct timespec ts = {0, 30 * 1000000L};
        nanosleep(&ts, NULL);
        printf("tick %ld sum=%ld reaped=%ld\n", i, sum, reaped);
    }
    printf("done\n");
    return 0;
}
