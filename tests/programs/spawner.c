/*
 * spawner.c - exercises: a checkpoint that lands while threads are being born. The main
 * thread creates and joins short-lived threads without pause, so a freeze often catches
 * it inside clone(); each thread hashes its (round, index) and the main thread folds the
 * results into a running sum.
 *
 * Usage:  spawner <ticks>
 * Output: "pid <pid>"
 *         "tick <i> pid=<pid> sum=<hex>"   every ROUNDS rounds of THREADS threads
 * Deterministic apart from the pid (and how fast ticks come).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define THREADS 3
#define ROUNDS 50

struct job {
    uint64_t seed;
    uint64_t result;
};

static void *work(void *arg)
{
    struct job *job = arg;
    uint64_t x = job->seed;
    for (int i = 0; i < 2000; i++)
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    job->result = x ^ (x >> 29);
    return NULL;
}

int main(int argc, char **argv)
{
    int ticks = argc > 1 ? atoi(argv[1]) : 100;
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("pid %d\n", getpid());
    uint64_t sum = 0;
    for (int tick = 0; tick < ticks; tick++) {
        for (int round = 0; round < ROUNDS; round++) {
            pthread_t threads[THREADS];
            struct job jobs[THREADS];
            for (int i = 0; i < THREADS; i++) {
                jobs[i].seed = ((uint64_t)tick * ROUNDS + round) * THREADS + i;
                if (pthread_create(&threads[i], NULL, work, &jobs[i]) != 0) {
                    perror("pthread_create");
                    return 2;
                }
            }
            for (int i = 0; i < THREADS; i++) {
                pthread_join(threads[i], NULL);
                sum = sum * 31 + jobs[i].result;
            }
        }
        printf("tick %d pid=%d sum=%016llx\n", tick, getpid(), (unsigned long long)sum);
    }
    return 0;
}
