/*
 * threads.c - exercises: many pthreads across a checkpoint. Workers update per-thread
 * counters and a shared total under a mutex; a checker thread verifies the invariant
 * (sum of counters == total) and that every worker keeps moving (a worker that has not
 * moved for STALL_MS is "stalled"; a jump of the clock by more than JUMP_MS between two
 * rounds of the checker, i.e. the process stood still, restarts the stall clocks); each
 * worker checks its thread-local variables, its gettid() and a vector register (ymm9, and
 * zmm25 where the CPU has AVX-512) kept across a sleep. At the end the main thread joins
 * every worker (threads that existed before a checkpoint must be joinable after restore)
 * and creates and joins a new thread.
 *
 * Usage:  threads <workers> <ticks>
 * Output: "pid <pid>"
 *         "tick <i> pid=<pid> workers=<n> ok=<1|0> broken=<reason or ->"  every 100 ms
 *         "final joined=<n> new_thread=<1|0> tids_ok=<1|0>"
 * Deterministic apart from the pid; any broken invariant prints a reason and exits 3.
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_WORKERS 128
#define TICK_MS 100
#define STALL_MS 3000
#define JUMP_MS 1000

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t counters[MAX_WORKERS];
static uint64_t total;
static atomic_int stop;
static atomic_int broken;
static char reason[128];
static int workers;
static pid_t tids[MAX_WORKERS];
static atomic_uint_fast64_t last_move_ms[MAX_WORKERS];
static int has_avx512;

static __thread int tls_index = -1;
static __thread uint64_t tls_sum;

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void fail(const char *why, int who)
{
    if (atomic_exchange(&broken, 1) == 0)
        snprintf(reason, sizeof reason, "%s(worker %d)", why, who);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* Loads a pattern into ymm9 (and zmm25), sleeps, reads them back. */
__attribute__((target("avx2"))) static int vector_survives_sleep(int i)
{
    uint32_t in[8], out[8];
    for (int k = 0; k < 8; k++)
        in[k] = 0x1000u * (uint32_t)i + (uint32_t)k;
    __asm__ volatile("vmovdqu %0, %%ymm9" ::"m"(in) : "xmm9");
    sleep_ms(2);
    __asm__ volatile("vmovdqu %%ymm9, %0" : "=m"(out));
    return memcmp(in, out, sizeof in) == 0;
}

__attribute__((target("avx512f"))) static int zmm_survives_sleep(int i)
{
    uint32_t in[16], out[16];
    for (int k = 0; k < 16; k++)
        in[k] = 0x5000u * (uint32_t)i + (uint32_t)k;
    __asm__ volatile("vmovdqu32 %0, %%zmm25" ::"m"(in) : "xmm25");
    sleep_ms(2);
    __asm__ volatile("vmovdqu32 %%zmm25, %0" : "=m"(out));
    return memcmp(in, out, sizeof in) == 0;
}

static void *worker(void *arg)
{
    int i = (int)(intptr_t)arg;
    tls_index = i;
    tids[i] = gettid();
    for (uint64_t n = 0; !atomic_load(&stop); n++) {
        pthread_mutex_lock(&lock);
        counters[i]++;
        total++;
        pthread_mutex_unlock(&lock);
        tls_sum += (uint64_t)i;
        atomic_store(&last_move_ms[i], now_ms());
        if (n % 64 == 0) {
            if (!vector_survives_sleep(i))
                fail("ymm9 changed", i);
            if (has_avx512 && !zmm_survives_sleep(i))
                fail("zmm25 changed", i);
            if (tls_index != i || tls_sum != (n + 1) * (uint64_t)i)
                fail("thread-local variables changed", i);
            if (gettid() != tids[i])
                fail("gettid changed", i);
        }
    }
    return (void *)(intptr_t)(i + 1);
}

static void *checker(void *arg)
{
    (void)arg;
    uint64_t prev = now_ms();
    while (!atomic_load(&stop)) {
        pthread_mutex_lock(&lock);
        uint64_t sum = 0;
        for (int i = 0; i < workers; i++)
            sum += counters[i];
        if (sum != total)
            fail("counter sum != total", -1);
        pthread_mutex_unlock(&lock);
        uint64_t t = now_ms();
        if (t > prev + JUMP_MS) {
            /* The whole process stood still (checkpointed and restored later: the
               monotonic clock jumped by the time in between): restart the stall clocks. */
            for (int i = 0; i < workers; i++)
                atomic_store(&last_move_ms[i], t);
        } else {
            for (int i = 0; i < workers; i++)
                if (t > atomic_load(&last_move_ms[i]) + STALL_MS)
                    fail("stalled", i);
        }
        prev = t;
        sleep_ms(10);
    }
    return NULL;
}

static void *late_thread(void *arg)
{
    return (void *)(intptr_t)(gettid() != getpid() && arg == (void *)7);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 3)
        return 2;
    workers = atoi(argv[1]);
    int ticks = atoi(argv[2]);
    if (workers < 1 || workers > MAX_WORKERS)
        return 2;
    has_avx512 = __builtin_cpu_supports("avx512f");
    printf("pid %d\n", getpid());
    pthread_t threads[MAX_WORKERS], check;
    for (int i = 0; i < workers; i++)
        atomic_store(&last_move_ms[i], now_ms());
    for (int i = 0; i < workers; i++)
        pthread_create(&threads[i], NULL, worker, (void *)(intptr_t)i);
    pthread_create(&check, NULL, checker, NULL);
    for (int t = 0; t < ticks; t++) {
        sleep_ms(TICK_MS);
        int bad = atomic_load(&broken);
        printf("tick %d pid=%d workers=%d ok=%d broken=%s\n", t, getpid(), workers, !bad,
               bad ? reason : "-");
        if (bad)
            return 3;
    }
    atomic_store(&stop, 1);
    int joined = 0;
    for (int i = 0; i < workers; i++) {
        void *ret;
        if (pthread_join(threads[i], &ret) == 0 && ret == (void *)(intptr_t)(i + 1))
            joined++;
    }
    pthread_join(check, NULL);
    pthread_t late;
    void *late_ok = NULL;
    int created = pthread_create(&late, NULL, late_thread, (void *)7) == 0 &&
                  pthread_join(late, &late_ok) == 0;
    int tids_ok = 1;
    for (int i = 0; i < workers; i++)
        tids_ok &= tids[i] > 0;
    printf("final joined=%d new_thread=%d tids_ok=%d\n", joined, created && late_ok != NULL, tids_ok);
    return 0;
}
