/*
 * blocked.c - exercises: threads blocked in different ways when the checkpoint comes, and
 * that each of them is woken exactly as often as it should be afterwards. Between ticks the
 * main thread sleeps (TICK_MS) while the threads wait:
 *   mutex   in pthread_mutex_lock on a mutex the main thread holds all the time except
 *           for one hand-over per tick (the thread counts one acquisition per tick);
 *   cond    in pthread_cond_wait, signalled once per tick;
 *   timed   in pthread_cond_timedwait (deadline an hour ahead, so it never times out),
 *           signalled once per tick; "timeouts" counts deadlines that passed (always 0);
 *   join    in pthread_join on a short-lived "sleeper" thread that naps (nanosleep 5 ms in a
 *           loop) until the main thread lets it end, every JOIN_EVERY ticks; the joiner then
 *           joins the next sleeper, created before the previous one was let go;
 *   sleep   in sleep(1) (retried with what is left when it returns early), started once
 *           every SLEEP_EVERY ticks and waited for on the last tick of that stretch;
 *   pipe    in read() of one byte from stdin, which must be a pipe nobody else writes to:
 *           the main thread writes one letter per tick into it through a write end it
 *           opens (/proc/self/fd/0) and closes right away, so between ticks the process
 *           holds no pipe fd besides stdio (mlckpt restores only those); "pipe_ok" says
 *           every byte was the expected letter and no read failed;
 *   spin    in a pure user-space loop (no syscalls) that steps two identical LCGs and checks
 *           they agree; the main thread waits each tick until its counter moved.
 * Every tick the main thread hands over, signals and writes, then waits (polling, at most
 * HANG_MS) until each thread has reported; a lost wakeup, a hung thread, an extra wakeup or
 * a failed syscall restart changes the numbers in the tick line (and a hang exits 3).
 * At the end every thread is told to stop and joined (the last sleep(1) is let finish).
 *
 * Usage:  blocked <ticks>   (stdin a pipe, e.g. `sleep 1000 | blocked 20`)
 * Output: "pid <pid>"
 *         "tick <i> pid=<pid> mutex=<n> cond=<n> timed=<n> timeouts=<n> join=<n> sleep=<n>
 *          pipe=<n> pipe_ok=<0|1> spin=<0|1> spin_ok=<0|1> hung=<thread or ->"  every tick
 *         "final joined=<n> mutex=<n> cond=<n> timed=<n> join=<n> sleep=<n> pipe=<n>"
 * Deterministic apart from the pid: tick i shows mutex=cond=timed=pipe=i+1,
 * join=(i+1)/JOIN_EVERY, sleep=(i+1)/SLEEP_EVERY.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define TICK_MS 120
#define HANG_MS 15000
#define JOIN_EVERY 3
#define SLEEP_EVERY 10
#define MAX_SLEEPERS 1024

static atomic_int stop;

/* mutex: held by main; the locker may count once per tick (mutex_allowed, under mlock). */
static pthread_mutex_t mlock = PTHREAD_MUTEX_INITIALIZER;
static int mutex_allowed;
static atomic_int mutex_count;
static atomic_int mutex_relocked;

/* cond and timed: one mutex, two condition variables, a counter of signals for each. */
static pthread_mutex_t cmutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond_plain = PTHREAD_COND_INITIALIZER;
static pthread_cond_t cond_timed = PTHREAD_COND_INITIALIZER;
static int cond_signals, timed_signals;
static atomic_int cond_count, timed_count, timeouts;

/* join: sleepers[k] naps until sleeper_release >= k; the joiner joins them in order. */
static pthread_t sleepers[MAX_SLEEPERS];
static atomic_int sleeper_release;
static atomic_int join_count;
static int last_sleeper = -1;

/* sleep: one sleep(1) per go; the post after go number sleep_gos (set at the end) quits. */
static sem_t sleep_go;
static atomic_int sleep_count;
static atomic_int sleep_gos = 1 << 30;

/* pipe: stdin */
static atomic_int pipe_count;
static atomic_int pipe_bad;

/* spin */
static atomic_uint_fast64_t spin_count;
static atomic_int spin_bad;

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* Polls until *v >= want (at most HANG_MS); returns 0 on a hang. */
static int wait_count(atomic_int *v, int want)
{
    uint64_t deadline = now_ms() + HANG_MS;
    while (atomic_load(v) < want) {
        if (now_ms() > deadline)
            return 0;
        sleep_ms(1);
    }
    return 1;
}

static void *mutex_thread(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&mlock); /* blocks: main holds it */
        int counted = 0;
        if (atomic_load(&mutex_count) < mutex_allowed) {
            atomic_fetch_add(&mutex_count, 1);
            counted = atomic_load(&mutex_count);
        }
        int done = atomic_load(&stop);
        pthread_mutex_unlock(&mlock);
        if (done)
            return NULL;
        /* Let main take the mutex back before trying again (no lock ping-pong). */
        while (counted && atomic_load(&mutex_relocked) < counted && !atomic_load(&stop))
            sched_yield();
    }
}

static void *cond_thread(void *arg)
{
    (void)arg;
    int seen = 0;
    pthread_mutex_lock(&cmutex);
    while (!atomic_load(&stop)) {
        while (seen == cond_signals && !atomic_load(&stop))
            pthread_cond_wait(&cond_plain, &cmutex);
        if (seen < cond_signals) {
            seen++;
            atomic_fetch_add(&cond_count, 1);
        }
    }
    pthread_mutex_unlock(&cmutex);
    return NULL;
}

static void *timed_thread(void *arg)
{
    (void)arg;
    int seen = 0;
    pthread_mutex_lock(&cmutex);
    while (!atomic_load(&stop)) {
        while (seen == timed_signals && !atomic_load(&stop)) {
            struct timespec deadline;
            clock_gettime(CLOCK_REALTIME, &deadline);
            deadline.tv_sec += 3600;
            if (pthread_cond_timedwait(&cond_timed, &cmutex, &deadline) == ETIMEDOUT)
                atomic_fetch_add(&timeouts, 1);
        }
        if (seen < timed_signals) {
            seen++;
            atomic_fetch_add(&timed_count, 1);
        }
    }
    pthread_mutex_unlock(&cmutex);
    return NULL;
}

static void *sleeper_thread(void *arg)
{
    int k = (int)(intptr_t)arg;
    while (atomic_load(&sleeper_release) < k)
        sleep_ms(5);
    return (void *)(intptr_t)(k + 1000);
}

static void *join_thread(void *arg)
{
    (void)arg;
    for (int k = 1;; k++) {
        void *ret = NULL;
        /* sleepers[k] was written before sleepers[k - 1] was let go. */
        if (pthread_join(sleepers[k], &ret) != 0 || ret != (void *)(intptr_t)(k + 1000))
            return NULL; /* join_count stops: the tick line shows it */
        if (k == last_sleeper) /* set before the last release */
            return NULL;
        atomic_fetch_add(&join_count, 1);
    }
}

static void *sleep_thread(void *arg)
{
    (void)arg;
    for (int go = 1;; go++) {
        while (sem_wait(&sleep_go) != 0)
            ;
        if (go > atomic_load(&sleep_gos))
            return NULL;
        unsigned left = 1;
        while ((left = sleep(left)) > 0)
            ;
        atomic_fetch_add(&sleep_count, 1);
    }
}

/* Writes one byte into our own stdin pipe through a write end opened just for it. */
static int write_stdin(char c)
{
    int fd = open("/proc/self/fd/0", O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    int ok = write(fd, &c, 1) == 1;
    close(fd);
    return ok;
}

static void *pipe_thread(void *arg)
{
    (void)arg;
    for (int n = 0;; n++) {
        char c;
        ssize_t r = read(0, &c, 1);
        if (r == 1 && c == '.')
            return NULL;
        if (r != 1 || c != 'a' + n % 26)
            atomic_store(&pipe_bad, 1);
        atomic_fetch_add(&pipe_count, 1);
    }
}

static void *spin_thread(void *arg)
{
    (void)arg;
    uint64_t a = 1, b = 1;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        for (int i = 0; i < 4096; i++) {
            a = a * 6364136223846793005ULL + 1442695040888963407ULL;
            b = b * 6364136223846793005ULL + 1442695040888963407ULL;
            __asm__ volatile("" : "+r"(a), "+r"(b));
        }
        if (a != b)
            atomic_store(&spin_bad, 1);
        atomic_fetch_add_explicit(&spin_count, 1, memory_order_relaxed);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2) {
        fprintf(stderr, "usage: blocked <ticks>\n");
        return 2;
    }
    int ticks = atoi(argv[1]);
    if (ticks < 1 || ticks / JOIN_EVERY + 2 >= MAX_SLEEPERS)
        return 2;
    printf("pid %d\n", getpid());
    if (sem_init(&sleep_go, 0, 0) != 0)
        return 2;

    enum { MUTEX, COND, TIMED, JOIN, SLEEP, PIPE, SPIN, NTHREADS };
    void *(*fns[NTHREADS])(void *) = {mutex_thread, cond_thread, timed_thread, join_thread,
                                      sleep_thread, pipe_thread, spin_thread};
    pthread_t threads[NTHREADS];
    pthread_mutex_lock(&mlock);
    pthread_create(&sleepers[1], NULL, sleeper_thread, (void *)(intptr_t)1);
    for (int i = 0; i < NTHREADS; i++)
        pthread_create(&threads[i], NULL, fns[i], NULL);
    sem_post(&sleep_go);

    int gos = 1, joins = 0, sleeps = 0;
    const char *hung = "-";
    for (int t = 0; t < ticks; t++) {
        sleep_ms(TICK_MS);
        int n = t + 1;

        /* mutex: hand over once */
        mutex_allowed = n;
        pthread_mutex_unlock(&mlock);
        int ok = wait_count(&mutex_count, n);
        pthread_mutex_lock(&mlock);
        atomic_store(&mutex_relocked, n);
        if (!ok)
            hung = "mutex";

        /* cond, timed: one signal each */
        pthread_mutex_lock(&cmutex);
        cond_signals = n;
        timed_signals = n;
        pthread_cond_signal(&cond_plain);
        pthread_cond_signal(&cond_timed);
        pthread_mutex_unlock(&cmutex);
        if (!wait_count(&cond_count, n))
            hung = "cond";
        if (!wait_count(&timed_count, n))
            hung = "timed";

        /* pipe: one letter */
        if (!write_stdin((char)('a' + t % 26)))
            atomic_store(&pipe_bad, 1);
        if (!wait_count(&pipe_count, n))
            hung = "pipe";

        /* join: every JOIN_EVERY ticks the current sleeper ends, the next one is ready */
        if (n % JOIN_EVERY == 0) {
            int k = n / JOIN_EVERY;
            pthread_create(&sleepers[k + 1], NULL, sleeper_thread, (void *)(intptr_t)(k + 1));
            atomic_store(&sleeper_release, k);
            if (!wait_count(&join_count, k))
                hung = "join";
            joins = atomic_load(&join_count);
        }

        /* sleep: the sleep(1) started SLEEP_EVERY ticks ago must be over */
        if (n % SLEEP_EVERY == 0) {
            if (!wait_count(&sleep_count, n / SLEEP_EVERY))
                hung = "sleep";
            sleeps = atomic_load(&sleep_count);
            sem_post(&sleep_go);
            gos++;
        }

        /* spin: the counter moves */
        uint64_t spin0 = atomic_load(&spin_count);
        uint64_t deadline = now_ms() + HANG_MS;
        while (atomic_load(&spin_count) == spin0 && now_ms() < deadline)
            sleep_ms(1);
        int spun = atomic_load(&spin_count) != spin0;
        if (!spun)
            hung = "spin";

        printf("tick %d pid=%d mutex=%d cond=%d timed=%d timeouts=%d join=%d sleep=%d pipe=%d "
               "pipe_ok=%d spin=%d spin_ok=%d hung=%s\n",
               t, getpid(), atomic_load(&mutex_count), atomic_load(&cond_count),
               atomic_load(&timed_count), atomic_load(&timeouts), joins, sleeps,
               atomic_load(&pipe_count), !atomic_load(&pipe_bad), spun,
               !atomic_load(&spin_bad), hung);
        if (hung[0] != '-')
            return 3;
    }

    /* Stop everything and join. */
    atomic_store(&stop, 1);
    int k = ticks / JOIN_EVERY + 1; /* the sleeper the joiner waits on now */
    last_sleeper = k;
    atomic_store(&sleeper_release, k);
    pthread_mutex_unlock(&mlock);
    pthread_mutex_lock(&cmutex);
    pthread_cond_broadcast(&cond_plain);
    pthread_cond_broadcast(&cond_timed);
    pthread_mutex_unlock(&cmutex);
    write_stdin('.');
    atomic_store(&sleep_gos, gos);
    sem_post(&sleep_go);
    int joined = 0;
    for (int i = 0; i < NTHREADS; i++)
        joined += pthread_join(threads[i], NULL) == 0;
    printf("final joined=%d mutex=%d cond=%d timed=%d join=%d sleep=%d pipe=%d\n", joined,
           atomic_load(&mutex_count), atomic_load(&cond_count), atomic_load(&timed_count),
           atomic_load(&join_count), atomic_load(&sleep_count), atomic_load(&pipe_count));
    return 0;
}
