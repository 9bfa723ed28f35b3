/*
 * timerfd - three timers:
 *   one-shot: CLOCK_MONOTONIC, relative, 30 s, TFD_NONBLOCK;
 *   interval: CLOCK_MONOTONIC, every 100 ms, TFD_NONBLOCK, expirations left unread;
 *   absolute: CLOCK_REALTIME, TFD_TIMER_ABSTIME one day ahead, interval 1 h, TFD_CLOEXEC.
 * Before `ready` each one's timerfd_gettime, the interval timer's expiration count (fdinfo
 * `ticks:` after a timerfd_gettime, which folds the overruns in; nothing is read) and both
 * clocks are saved. After restore:
 *   - fcntl flags and the fdinfo lines `clockid:` and `settime flags:` are unchanged;
 *   - the one-shot has not fired, its interval is 0, and its time left is the saved one
 *     minus the time that passed (not reset to 30 s, never more than before), within
 *     -50 ms / +500 ms;
 *   - the interval timer's read() gives the saved count plus every expiration due since
 *     (counted from its saved next expiry and period), within +-1; the period is 100 ms and
 *     the next expiry is at most one period away;
 *   - the absolute timer has not fired, expires at the same CLOCK_REALTIME instant (+-100 ms)
 *     and keeps its 1 h interval.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"
#include "fdinfo.h"

#define MS 1000000LL
#define SEC 1000000000LL
#define PERIOD (100 * MS)
#define ONESHOT (30 * SEC)
#define DAY (86400 * SEC)
#define HOUR (3600 * SEC)

enum { ONE, TICK, ABS, NTIMERS };
static const char *const names[NTIMERS] = {"one-shot timer", "interval timer",
                                            "absolute timer"};
static const char *const keys[] = {"clockid:", "settime flags:"};
#define NKEYS (sizeof keys / sizeof keys[0])

static long long ns_of(struct timespec t) { return t.tv_sec * SEC + t.tv_nsec; }

static struct timespec ts_of(long long ns)
{
    struct timespec t = {ns / SEC, ns % SEC};
    return t;
}

static long long now(clockid_t clock)
{
    struct timespec t;
    clock_gettime(clock, &t);
    return ns_of(t);
}

struct saved {
    struct fd_flags flags;
    char value[NKEYS][32];
    long long left, interval;
};

static int save(int fd, struct saved *s)
{
    struct itimerspec cur;
    if (timerfd_gettime(fd, &cur))
        return -1;
    s->left = ns_of(cur.it_value);
    s->interval = ns_of(cur.it_interval);
    s->flags = fd_flags_of(fd);
    for (size_t k = 0; k < NKEYS; k++)
        if (fdinfo_value(fd, keys[k], s->value[k], sizeof s->value[k]) != 1)
            return -1;
    return 0;
}

/* Unread expirations from the fdinfo `ticks:` line; call timerfd_gettime just before. */
static long long ticks_of(int fd)
{
    char v[32];
    return fdinfo_value(fd, "ticks:", v, sizeof v) == 1 ? atoll(v) : -1;
}

static int readable(int fd)
{
    struct pollfd p = {fd, POLLIN, 0};
    return poll(&p, 1, 0) == 1;
}

int main(void)
{
    start();
    int fds[NTIMERS] = {
        timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK),
        timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK),
        timerfd_create(CLOCK_REALTIME, TFD_CLOEXEC),
    };
    long long abs_at = (now(CLOCK_REALTIME) / SEC) * SEC + DAY;
    struct itimerspec one = {ts_of(0), ts_of(ONESHOT)};
    struct itimerspec tick = {ts_of(PERIOD), ts_of(PERIOD)};
    struct itimerspec abs = {ts_of(HOUR), ts_of(abs_at)};
    if (fds[ONE] < 0 || fds[TICK] < 0 || fds[ABS] < 0 ||
        timerfd_settime(fds[ONE], 0, &one, NULL) ||
        timerfd_settime(fds[TICK], 0, &tick, NULL) ||
        timerfd_settime(fds[ABS], TFD_TIMER_ABSTIME, &abs, NULL)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        return 1;
    }
    /* Let a few expirations of the interval timer pile up. */
    struct timespec wait = ts_of(350 * MS);
    nanosleep(&wait, NULL);

    struct saved was[NTIMERS];
    for (int i = 0; i < NTIMERS; i++)
        if (save(fds[i], &was[i])) {
            printf("FAIL set-up: %s: %s\n", names[i], strerror(errno));
            return 1;
        }
    long long ticks0 = ticks_of(fds[TICK]);
    long long t0 = now(CLOCK_MONOTONIC);
    if (ticks0 < 3 || ticks0 > 1000) {
        printf("FAIL set-up: %lld expirations of the interval timer after 350 ms\n", ticks0);
        return 1;
    }
    ready_then_wait();

    struct itimerspec cur[NTIMERS];
    for (int i = 0; i < NTIMERS; i++)
        if (timerfd_gettime(fds[i], &cur[i]))
            FAILED("%s: timerfd_gettime: %s", names[i], strerror(errno));
    long long t1 = now(CLOCK_MONOTONIC), r1 = now(CLOCK_REALTIME);
    long long elapsed = t1 - t0;

    for (int i = 0; i < NTIMERS; i++) {
        CHECK_FD_FLAGS(names[i], fds[i], was[i].flags);
        for (size_t k = 0; k < NKEYS; k++) {
            char v[32] = "";
            if (fdinfo_value(fds[i], keys[k], v, sizeof v) != 1 || strcmp(v, was[i].value[k]))
                FAILED("%s: fdinfo `%s` is `%s`, was `%s`", names[i], keys[k], v,
                       was[i].value[k]);
        }
    }

    /* One-shot: still armed, time left = saved - elapsed. */
    long long left = ns_of(cur[ONE].it_value);
    long long want = was[ONE].left - elapsed;
    if (ns_of(cur[ONE].it_interval) != 0)
        FAILED("one-shot timer has interval %lld ns", ns_of(cur[ONE].it_interval));
    if (left <= 0 || readable(fds[ONE]))
        FAILED("one-shot timer fired or disarmed (time left %lld ns)", left);
    else if (left > was[ONE].left)
        FAILED("one-shot timer has %lld ms left, more than the %lld ms before the checkpoint",
               left / MS, was[ONE].left / MS);
    else if (left < want - 50 * MS || left > want + 500 * MS)
        FAILED("one-shot timer has %lld ms left, expected %lld ms (%lld ms before, %lld ms "
               "elapsed)",
               left / MS, want / MS, was[ONE].left / MS, elapsed / MS);

    /* Interval: every expiration since the saved state is counted. */
    long long due = 0;
    if (elapsed >= was[TICK].left)
        due = 1 + (elapsed - was[TICK].left) / PERIOD;
    uint64_t got = 0;
    ssize_t r = read(fds[TICK], &got, sizeof got);
    if (r != sizeof got)
        FAILED("interval timer read: %s", r < 0 ? strerror(errno) : "short");
    else if ((long long)got < ticks0 + due - 1 || (long long)got > ticks0 + due + 1)
        FAILED("interval timer read %llu expirations, expected %lld (+-1): %lld before the "
               "checkpoint, %lld due in the %lld ms since",
               (unsigned long long)got, ticks0 + due, ticks0, due, elapsed / MS);
    if (ns_of(cur[TICK].it_interval) != PERIOD)
        FAILED("interval timer period %lld ns, expected %lld", ns_of(cur[TICK].it_interval),
               PERIOD);
    if (ns_of(cur[TICK].it_value) <= 0 || ns_of(cur[TICK].it_value) > PERIOD)
        FAILED("interval timer next expiry in %lld ns, expected within one period",
               ns_of(cur[TICK].it_value));

    /* Absolute: the same CLOCK_REALTIME instant, the same interval. */
    long long abs_left = ns_of(cur[ABS].it_value);
    if (abs_left <= 0 || readable(fds[ABS]))
        FAILED("absolute timer fired or disarmed");
    else if (llabs(r1 + abs_left - abs_at) > 100 * MS)
        FAILED("absolute timer expires %lld ms away from its CLOCK_REALTIME instant",
               (r1 + abs_left - abs_at) / MS);
    if (ns_of(cur[ABS].it_interval) != HOUR)
        FAILED("absolute timer interval %lld ns, expected one hour",
               ns_of(cur[ABS].it_interval));
    return verdict();
}
