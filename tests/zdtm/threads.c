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

#include "zdtm.h"

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
