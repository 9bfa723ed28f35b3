/*
 * sigmask_steps.c - reports the signal mask it was started with, then runs a few steps: a
 * program that `mlckpt run` starts must begin with the mask a plain start gives it (nothing
 * blocked), whatever mlckpt blocked in itself to catch its own signals.
 *
 * Usage:  sigmask_steps <steps> <period ms>
 * Output: "pid <pid>"
 *         the "SigBlk:" line of /proc/self/status, as the kernel wrote it
 *         "step <k>"   k = 1..steps, one per period
 *         "done"
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 3) {
        fprintf(stderr, "usage: sigmask_steps <steps> <period ms>\n");
        return 2;
    }
    long steps = strtol(argv[1], NULL, 10);
    long period = strtol(argv[2], NULL, 10);
    printf("pid %d\n", getpid());

    FILE *status = fopen("/proc/self/status", "r");
    if (status == NULL) {
        perror("sigmask_steps: /proc/self/status");
        return 1;
    }
    char line[256];
    int found = 0;
    while (fgets(line, sizeof line, status) != NULL) {
        if (strncmp(line, "SigBlk:", 7) == 0) {
            fputs(line, stdout);
            found = 1;
            break;
        }
    }
    fclose(status);
    if (!found) {
        fprintf(stderr, "sigmask_steps: no SigBlk line in /proc/self/status\n");
        return 1;
    }

    for (long k = 1; k <= steps; k++) {
        printf("step %ld\n", k);
        usleep(period * 1000); /* nothing signals it: no early wake to make up for */
    }
    printf("done\n");
    return 0;
}
