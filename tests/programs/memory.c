/*
 * memory.c - exercises: anonymous memory (a large malloc, so glibc maps it with mmap), the
 * .data and .bss segments and stack data, all filled from a seeded xorshift PRNG and
 * mutated at pseudo-random places every tick. The PRNG state itself lives in .data, so a
 * restore that loses or mixes up any page changes every later line.
 *
 * Usage:  memory <MiB> <ticks> [mutations per tick, default 300] [threads, default 1]
 *         (extra threads update arrays of their own and sleep 1 ms between rounds; they
 *         change nothing that is printed)
 * Output: "pid <pid>"
 *         "tick <i> pid=<pid> sum=<hex>"   per tick; sum is a running checksum over the old and
 *                                          new value of every mutated word
 *         "final <hex>"                    checksum of the whole buffer, statics and stack
 * Deterministic apart from the pid. 1024 MiB works (the fill takes about a second).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define DATA_WORDS 4096      /* 32 KiB in .data */
#define BSS_WORDS 65536      /* 512 KiB in .bss */
#define STACK_WORDS 2048     /* 16 KiB on the stack */
#define MUTATIONS 300
#define TICK_MS 30

static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;
static uint64_t data_arr[DATA_WORDS] = {1, 2, 3};
static uint64_t bss_arr[BSS_WORDS];

static uint64_t xorshift(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static uint64_t mix(uint64_t sum, uint64_t v)
{
    sum ^= v;
    sum *= 0x100000001b3ULL;
    return (sum << 13) | (sum >> 51);
}

static uint64_t checksum(uint64_t sum, const uint64_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        sum = mix(sum, p[i]);
    return sum;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL); /* pacing only: an early (EINTR) wake-up changes no output */
}

/* An extra thread: writes its own array, sleeps, again. */
static void *busy(void *arg)
{
    uint64_t own[8192];
    for (uint64_t n = (uintptr_t)arg;; n++) {
        for (size_t i = 0; i < 8192; i += 64)
            own[(i + n) % 8192] = n * i;
        sleep_ms(1);
        __asm__ volatile("" ::"r"(own) : "memory");
    }
    return NULL;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 3 || argc > 5) {
        fprintf(stderr, "usage: memory <MiB> <ticks> [mutations per tick] [threads]\n");
        return 2;
    }
    size_t words = strtoull(argv[1], NULL, 10) * 1024 * 1024 / sizeof(uint64_t);
    long ticks = strtol(argv[2], NULL, 10);
    int mutations = argc >= 4 ? atoi(argv[3]) : MUTATIONS;
    int threads = argc == 5 ? atoi(argv[4]) : 1;
    uint64_t stack_arr[STACK_WORDS];

    printf("pid %d\n", getpid());
    uint64_t *buf = malloc(words * sizeof(uint64_t));
    if (buf == NULL || words == 0) {
        fprintf(stderr, "memory: cannot allocate %s MiB\n", argv[1]);
        return 1;
    }
    for (size_t i = 0; i < words; i++)
        buf[i] = xorshift();
    for (size_t i = 0; i < DATA_WORDS; i++)
        data_arr[i] ^= xorshift();
    for (size_t i = 0; i < BSS_WORDS; i++)
        bss_arr[i] = xorshift();
    for (size_t i = 0; i < STACK_WORDS; i++)
        stack_arr[i] = xorshift();

    for (int i = 1; i < threads; i++) {
        pthread_t t;
        pthread_create(&t, NULL, busy, (void *)(uintptr_t)i);
    }
    uint64_t sum = 0;
    for (long t = 0; t < ticks; t++) {
        for (int k = 0; k < mutations; k++) {
            uint64_t r = xorshift();
            uint64_t *w;
            switch (r & 7) {
            case 0: w = &data_arr[(r >> 3) % DATA_WORDS]; break;
            case 1: w = &bss_arr[(r >> 3) % BSS_WORDS]; break;
            case 2: w = &stack_arr[(r >> 3) % STACK_WORDS]; break;
            default: w = &buf[(r >> 3) % words]; break;
            }
            uint64_t old = *w;
            *w = old ^ xorshift();
            sum = mix(mix(sum, old), *w);
        }
        printf("tick %ld pid=%d sum=%016llx\n", t, getpid(), (unsigned long long)sum);
        sleep_ms(TICK_MS);
    }

    uint64_t total = checksum(sum, buf, words);
    total = checksum(total, data_arr, DATA_WORDS);
    total = checksum(total, bss_arr, BSS_WORDS);
    total = checksum(total, stack_arr, STACK_WORDS);
    printf("final %016llx\n", (unsigned long long)total);
    free(buf);
    return 0;
}
