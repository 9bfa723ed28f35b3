/*
 * dirty.c - the simulation pattern: every step rewrites a share of a large anonymous
 * mapping, a window that moves on by its own size each step, so a few steps rewrite every
 * page (100 %: all of it, every step). A checkpoint cannot wait for this job to go quiet.
 *
 * Every word w of a page written at step k holds k, the page's index and w (see stamp()):
 * an old copy of a page, a page put back at another address, a page mixed from two copies
 * all show, and the word a FAIL prints says where it came from. Before a page is
 * overwritten it is checked against the step the program recorded for it (`last`), and
 * that record against the step the window's schedule gives for the current step (the
 * step counter itself lives in .data with the running checksum, which the output shows).
 * An image with some pages older than others (torn) therefore fails at the first step
 * that touches one of them, or at the next full check (all pages, every FULL_CHECK_EVERY
 * steps), whichever comes first.
 *
 * Usage:  dirty <MiB> <percent of pages written per step> <step period ms>
 *               [threads, default 1] [steps, default unlimited]
 *         (threads share each step's window, one slice each; period 0: no pause)
 * Output: "pid <pid>"
 *         "step <k> sum=<hex>"   per step; sum is a running checksum of what was overwritten
 *         "final <hex>"           once the steps ran out and every page checked out
 *         "FAIL page <i> ..."    a page or its record is not what was written; exit 1
 * Deterministic apart from the pid, whatever the timing and the number of threads.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define WORDS (PAGE / 8)
#define MAX_THREADS 64
#define FULL_CHECK_EVERY 16

static uint64_t *buf;
static uint32_t *last; /* the step that last wrote each page; 0: the fill */
static size_t pages, window;
static int threads;
static uint32_t step;  /* being run now; the threads read it after the start barrier */
static uint64_t sum;
/* Each thread's share of the step's checksum, on a cache line of its own. */
static struct { uint64_t v; char pad[56]; } part[MAX_THREADS];
static pthread_barrier_t start, mid, done;

static uint64_t mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

/* Word w of `page` written at step k is stamp(page, k) + w: the step (modulo 2^24) in the
 * top 24 bits, the page (up to 8 TiB) in the next 31, the word in the low 9. */
static uint64_t stamp(size_t page, uint32_t k)
{
    return (uint64_t)(k & 0xFFFFFF) << 40 | (uint64_t)page << 9;
}

/* The step that last wrote `page` before step k: window s (s >= 1) covers positions
 * [(s-1)W, sW) of the buffer repeated end to end. */
static uint32_t scheduled(size_t page, uint32_t k)
{
    uint64_t written = (uint64_t)(k - 1) * window;
    if (written <= page)
        return 0;
    uint64_t pos = page + (written - 1 - page) / pages * pages;
    return (uint32_t)(pos / window + 1);
}

static void check(size_t page)
{
    uint32_t k = last[page], want = scheduled(page, step);
    if (k != want) {
        printf("FAIL page %zu at step %u: recorded as written at step %u, the schedule says %u\n",
               page, step, k, want);
        exit(1);
    }
    const uint64_t *p = buf + page * WORDS, s = stamp(page, k);
    for (size_t w = 0; w < WORDS; w++)
        if (p[w] != s + w) {
            printf("FAIL page %zu at step %u: word %zu holds %016llx (step %llu page %llu word "
                   "%llu), expected step %u\n", page, step, w, (unsigned long long)p[w],
                   (unsigned long long)(p[w] >> 40), (unsigned long long)(p[w] >> 9 & 0x7FFFFFFF),
                   (unsigned long long)(p[w] & 511), k);
            exit(1);
        }
}

static void write_page(size_t page, uint32_t k)
{
    uint64_t *p = buf + page * WORDS, s = stamp(page, k);
    for (size_t w = 0; w < WORDS; w++)
        p[w] = s + w;
    last[page] = k;
}

/* Thread t's part of a step: on full-check steps its share of all pages first (all
 * threads finish checking before anyone writes), then its slice of the window. */
static void work(int t)
{
    if (step % FULL_CHECK_EVERY == 0) {
        for (size_t i = pages * t / threads; i < pages * (t + 1) / threads; i++)
            check(i);
        pthread_barrier_wait(&mid);
    }
    uint64_t first = (uint64_t)(step - 1) * window, acc = 0;
    for (size_t i = window * t / threads; i < window * (t + 1) / threads; i++) {
        size_t page = (first + i) % pages;
        check(page);
        acc += stamp(page, last[page]); /* a sum: the same whichever thread adds what */
        write_page(page, step);
    }
    part[t].v = acc;
}

static void *worker(void *arg)
{
    for (;;) {
        pthread_barrier_wait(&start);
        work((int)(intptr_t)arg);
        pthread_barrier_wait(&done);
    }
    return NULL;
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL); /* pacing only: an early (EINTR) wake-up changes no output */
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 4 || argc > 6) {
        fprintf(stderr, "usage: dirty <MiB> <percent per step> <period ms> [threads] [steps]\n");
        return 2;
    }
    pages = strtoull(argv[1], NULL, 10) * (1024 * 1024 / PAGE);
    long percent = strtol(argv[2], NULL, 10), period = strtol(argv[3], NULL, 10);
    threads = argc >= 5 ? atoi(argv[4]) : 1;
    long steps = argc == 6 ? strtol(argv[5], NULL, 10) : -1;
    if (pages == 0 || percent < 1 || percent > 100 || period < 0 || threads < 1 ||
        threads > MAX_THREADS) {
        fprintf(stderr, "dirty: bad arguments\n");
        return 2;
    }
    window = pages * percent / 100 ? pages * percent / 100 : 1;

    printf("pid %d\n", getpid());
    buf = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    last = calloc(pages, sizeof(*last));
    if (buf == MAP_FAILED || last == NULL) {
        fprintf(stderr, "dirty: cannot allocate %s MiB\n", argv[1]);
        return 1;
    }
    for (size_t i = 0; i < pages; i++)
        write_page(i, 0);

    pthread_barrier_init(&start, NULL, threads);
    pthread_barrier_init(&mid, NULL, threads);
    pthread_barrier_init(&done, NULL, threads);
    for (int t = 1; t < threads; t++) {
        pthread_t th;
        pthread_create(&th, NULL, worker, (void *)(intptr_t)t);
    }
    for (step = 1; steps < 0 || step <= steps; step++) {
        long t0 = now_ms();
        pthread_barrier_wait(&start);
        work(0);
        pthread_barrier_wait(&done);
        uint64_t acc = 0;
        for (int t = 0; t < threads; t++)
            acc += part[t].v;
        sum = mix(sum ^ acc) + step;
        printf("step %u sum=%016llx\n", step, (unsigned long long)sum);
        long left = period - (now_ms() - t0);
        if (left > 0)
            sleep_ms(left);
    }
    /* The other threads wait at the start barrier; step is one past the last one run. */
    for (size_t i = 0; i < pages; i++)
        check(i);
    printf("final %016llx\n", (unsigned long long)sum);
    return 0;
}
