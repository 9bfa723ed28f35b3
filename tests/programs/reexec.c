/*
 * reexec.c - exercises: a process that replaces itself with exec while it is supervised.
 * Address randomization is off (it re-execs itself once at start to make it so), so the
 * new image's heap lands exactly where the old one's was: a write tracker that went on
 * following the old address space would take the new heap for unchanged.
 *
 * Usage:  reexec <ticks> <exec tick>
 * Output: "pid <pid>"
 *         "tick <i> pid=<pid> image=<1|2> sum=<hex>"  per tick (30 ms); the exec at
 *                                                     <exec tick> goes from image 1 to 2
 *         "final <hex>"
 * Deterministic apart from the pid.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/personality.h>
#include <time.h>
#include <unistd.h>

#define HEAP (8UL << 20)

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 3)
        return 2;
    char ticks_s[32], at_s[32], image_s[4], from_s[32];
    long ticks = strtol(argv[1], NULL, 10), exec_at = strtol(argv[2], NULL, 10);
    int image = argc > 3 ? atoi(argv[3]) : 0;
    long from = argc > 4 ? strtol(argv[4], NULL, 10) : 0;
    snprintf(ticks_s, sizeof ticks_s, "%ld", ticks);
    snprintf(at_s, sizeof at_s, "%ld", exec_at);
    if (image == 0) {
        personality(ADDR_NO_RANDOMIZE);
        char *again[] = {argv[0], ticks_s, at_s, "1", "0", NULL};
        execv("/proc/self/exe", again);
        return 1;
    }
    if (image == 1)
        printf("pid %d\n", getpid());
    uint64_t *heap = sbrk(HEAP);
    if (heap == (void *)-1)
        return 1;
    for (size_t i = 0; i < HEAP / 8; i++)
        heap[i] = i * (image == 1 ? 0x9E3779B97F4A7C15ULL : 0xC2B2AE3D27D4EB4FULL);
    uint64_t sum = 0;
    for (long t = from; t < ticks; t++) {
        if (image == 1 && t == exec_at) {
            snprintf(image_s, sizeof image_s, "2");
            snprintf(from_s, sizeof from_s, "%ld", t);
            char *next[] = {argv[0], ticks_s, at_s, image_s, from_s, NULL};
            execv("/proc/self/exe", next);
            return 1;
        }
        heap[(t * 131) % (HEAP / 8)] += (uint64_t)t;
        for (size_t i = 0; i < HEAP / 8; i++)
            sum = (sum ^ heap[i]) * 0x100000001b3ULL;
        printf("tick %ld pid=%d image=%d sum=%016llx\n", t, getpid(), image,
               (unsigned long long)sum);
        struct timespec ts = {0, 30 * 1000000L};
        nanosleep(&ts, NULL);
    }
    printf("final %016llx\n", (unsigned long long)sum);
    return 0;
}
