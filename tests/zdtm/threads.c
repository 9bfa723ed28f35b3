/*
 * threads - 4 threads, each spinning on its own counter and checking its thread-local
 * variable (a distinct value per thread, set at start). After restore every counter must
 * still advance, every thread's TLS value (and the main thread's) must be intact, and every
 * thread must stop and be joined when asked.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t got_usr2;
static void on_usr2(int sig) { (void)sig; got_usr2 = 1; }

/* Line-buffered stdout, the SIGUSR2 handler, and the first line `pid <N>`. */
static void start(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr2;
    sigaction(SIGUSR2, &sa, NULL);
    printf("pid %d\n", (int)getpid());
}

/* Prints `ready`, then waits (across a checkpoint and restore) for SIGUSR2. */
static void ready_then_wait(void)
{
    printf("ready\n");
    while (!got_usr2) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

static char fail_msg[512];

/* Records the first failure. */
#define FAILED(...)                                                     \
    do {                                                                \
        if (!fail_msg[0])                                               \
            snprintf(fail_msg, sizeof fail_msg, __VA_ARGS__);           \
    } while (0)

/* Prints the verdict; the exit status of main. */
static int verdict(void)
{
    if (fail_msg[0]) {
        printf("FAIL %s\n", fail_msg);
        return 1;
    }
    printf("PASS\n");
    return 0;
}

__attribute__((unused)) static int write_full(int fd, const void *buf, size_t n)
{
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, (const char *)buf + done, n - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        done += (size_t)w;
    }
    return 0;
}

__attribute__((unused)) static int read_full(int fd, void *buf, size_t n)
{
    size_t done = 0;
    while (done < n) {
        ssize_t r = read(fd, (char *)buf + done, n - done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        done += (size_t)r;
    }
    return 0;
}

#define N 4

static _Thread_local uint64_t tls_value;
static _Thread_local int tls_index = -1;
static _Atomic uint64_t counters[N];
static _Atomic int bad[N];
static atomic_int stop;

static uint64_t expected(int i) { return 0x5a5a000000000000ULL + (uint64_t)i * 1000003; }

static void *spin(void *arg)
{
    int i = (int)(intptr_t)arg;
    tls_index = i;
    tls_value = expected(i);
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        if (tls_value != expected(i) || tls_index != i)
            atomic_store(&bad[i], 1);
        atomic_fetch_add_explicit(&counters[i], 1, memory_order_relaxed);
    }
    return (void *)(uintptr_t)(tls_value == expected(i) && tls_index == i ? 1 : 2);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000 * 1000};
    while (nanosleep(&ts, &ts) && errno == EINTR)
        ;
}

int main(void)
{
    start();
    tls_index = 100;
    tls_value = 777;
    pthread_t t[N];
    for (int i = 0; i < N; i++) {
        int rc = pthread_create(&t[i], NULL, spin, (void *)(intptr_t)i);
        if (rc) {
            printf("FAIL pthread_create: %s\n", strerror(rc));
            return 1;
        }
    }
    for (int i = 0; i < N; i++)
        while (atomic_load(&counters[i]) == 0)
            sleep_ms(1);
    ready_then_wait();

    if (tls_index != 100 || tls_value != 777)
        FAILED("the main thread's TLS is %d/%llu, expected 100/777", tls_index,
               (unsigned long long)tls_value);
    uint64_t before[N];
    for (int i = 0; i < N; i++)
        before[i] = atomic_load(&counters[i]);
    sleep_ms(300);
    for (int i = 0; i < N; i++) {
        uint64_t now = atomic_load(&counters[i]);
        if (now <= before[i])
            FAILED("thread %d's counter did not advance (%llu)", i, (unsigned long long)now);
    }
    for (int i = 0; i < N; i++)
        if (atomic_load(&bad[i]))
            FAILED("thread %d saw a wrong TLS value", i);
    atomic_store(&stop, 1);
    for (int i = 0; i < N; i++) {
        void *res = NULL;
        int rc = pthread_join(t[i], &res);
        if (rc)
            FAILED("pthread_join %d: %s", i, strerror(rc));
        else if (res != (void *)1)
            FAILED("thread %d ended with a wrong TLS value", i);
    }
    return verdict();
}
