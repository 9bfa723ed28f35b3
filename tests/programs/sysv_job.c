/*
 * sysv_job.c - exercises: System V shared memory between a producer (the root) and a
 * consumer (its child). Segment "ring" (key 0x4d4c0000 | pid & 0xffff, 0600, 3 pages and a
 * bit) carries one value per tick and the consumer's running sum; segment "tally"
 * (IPC_PRIVATE, marked IPC_RMID at once, so it only lives while attached) holds the
 * consumer's checksum of every value, read by the producer. Lock-step through the memory
 * only (sequence numbers polled every 200 us), so the output does not depend on timing:
 * a segment that comes back as a copy instead of the shared one stalls or prints a wrong
 * sum, one whose contents are lost prints wrong values.
 *
 * Usage:  sysv_job <ticks> [partial]
 *         partial: the producer unmaps the last page of its ring attach (which it never
 *         uses), an attach a restore could not make again
 * Output: "pid <pid>"
 *         "tick <i> value=<v> sum=<s> check=<c>"   i = 1..ticks
 *         "done child=<exit status>"
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TICK_MS 30
#define RING_SIZE (3 * 4096 + 512)

struct ring {
    volatile uint64_t seq;   /* producer: value `seq` is in `value` */
    volatile uint64_t value;
    volatile uint64_t acked; /* consumer: values up to `acked` are summed */
    volatile uint64_t sum;
    volatile uint64_t quit;
    unsigned char history[]; /* one byte per tick, written by the producer */
};

struct tally {
    volatile uint64_t check;
};

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static uint64_t value_of(uint64_t i)
{
    return (i * 2654435761u) % 100003;
}

static void consumer(struct ring *r, struct tally *t)
{
    uint64_t next = 1;
    for (;;) {
        while (r->seq < next && !r->quit)
            sleep_us(200);
        if (r->quit && r->seq < next)
            _exit(0);
        __sync_synchronize();
        r->sum += r->value;
        t->check = (t->check * 31 + r->value + r->history[next % 4096]) % 1000000007u;
        __sync_synchronize();
        r->acked = next;
        next++;
    }
}

int main(int argc, char **argv)
{
    int ticks = argc > 1 ? atoi(argv[1]) : 60;
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("pid %d\n", (int)getpid());
    key_t key = (key_t)(0x4d4c0000 | (getpid() & 0xffff));
    int ring_id = shmget(key, RING_SIZE, IPC_CREAT | IPC_EXCL | 0600);
    int tally_id = shmget(IPC_PRIVATE, sizeof(struct tally), IPC_CREAT | 0600);
    if (ring_id < 0 || tally_id < 0) {
        printf("FAIL shmget: %s\n", strerror(errno));
        return 1;
    }
    struct ring *r = shmat(ring_id, NULL, 0);
    struct tally *t = shmat(tally_id, NULL, 0);
    if (r == (void *)-1 || t == (void *)-1) {
        printf("FAIL shmat: %s\n", strerror(errno));
        shmctl(ring_id, IPC_RMID, NULL);
        shmctl(tally_id, IPC_RMID, NULL);
        return 1;
    }
    shmctl(tally_id, IPC_RMID, NULL);
    int partial = argc > 2 && strcmp(argv[2], "partial") == 0;
    pid_t child = fork();
    if (child < 0) {
        printf("FAIL fork: %s\n", strerror(errno));
        shmctl(ring_id, IPC_RMID, NULL);
        return 1;
    }
    if (child == 0)
        consumer(r, t);
    if (partial && munmap((char *)r + 3 * 4096, 4096)) {
        printf("FAIL munmap: %s\n", strerror(errno));
        return 1;
    }
    for (uint64_t i = 1; i <= (uint64_t)ticks; i++) {
        r->history[i % 4096] = (unsigned char)(i * 7);
        r->value = value_of(i);
        __sync_synchronize();
        r->seq = i;
        while (r->acked < i)
            sleep_us(200);
        __sync_synchronize();
        printf("tick %llu value=%llu sum=%llu check=%llu\n", (unsigned long long)i,
               (unsigned long long)r->value, (unsigned long long)r->sum,
               (unsigned long long)t->check);
        sleep_us(TICK_MS * 1000);
    }
    r->quit = 1;
    int st = 0;
    waitpid(child, &st, 0);
    printf("done child=%d\n", st);
    shmdt(r);
    shmdt(t);
    shmctl(ring_id, IPC_RMID, NULL);
    return 0;
}
