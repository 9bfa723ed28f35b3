/*
 * timerfd - three timers (timerfd_late.c has a fourth kind):
 *   one-shot: CLOCK_MONOTONIC, relative, 30 s, TFD_NONBLOCK;
 *   interval: CLOCK_MONOTONIC, every 100 ms, TFD_NONBLOCK, expirations left unread;
 *   absolute: CLOCK_REALTIME, TFD_TIMER_ABSTIME one day ahead, interval 1 h, TFD_CLOEXEC.
 * Before `ready`: the one-shot's and interval timer's timerfd_gettime, the interval
 * timer's expiration count (fdinfo `ticks:` after a timerfd_gettime, which folds the
 * overruns in; nothing is read), and CLOCK_MONOTONIC.
 *
 * Whether the time between checkpoint and restore counts for a relative timer is the
 * restorer's choice (mlckpt: it does not, as for a stopped process), so the checks accept
 * both, and nothing in between: the time since `ready` as the program sees it (`elapsed`)
 * bounds what may have passed on the timers. After restore:
 *   - fcntl flags and the fdinfo lines `clockid:` and `settime flags:` are unchanged;
 *   - one-shot: not fired, interval 0, time left never more than before `ready` and never
 *     less than that minus `elapsed` (50 ms slack): not reset to 30 s, not run down;
 *   - interval: the first read() gives at least the count saved before `ready` and at most
 *     that plus the expirations `elapsed` allows (+1); the period is 100 ms, the next expiry
 *     at most one period away, and it keeps firing: a read ~250 ms later gives the
 *     expirations that time allows (+-1);
 *   - absolute: not fired, expires at the same CLOCK_REALTIME instant (+-100 ms), keeps its
 *     1 h interval.
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
#include "timerfd.h"

#define PERIOD (100 * MS)
#define ONESHOT (30 * SEC)
#define DAY (86400 * SEC)
#define HOUR (3600 * SEC)

enum { ONE, TICK, ABS, NTIMERS };
static const char *const names[NTIMERS] = {"one-shot timer", "interval timer",
                                            "absolute timer"};
static const char *const keys[] = {"clockid:", "settime flags:"};
#define NKEYS (sizeof keys / sizeof keys[0])

struct saved {
    struct fd_flags flags;
    char value[NKEYS][32];
};

/* fcntl flags and the fdinfo lines: nothing that re-arms an expired timer. */
static int save(int fd, struct saved *s)
{
    s->flags = fd_flags_of(fd);
    for (size_t k = 0; k < NKEYS; k++)
        if (fdinfo_value(fd, keys[k], s->value[k], sizeof s->value[k]) != 1)
            return -1;
    return 0;
}

/* Unread expirations from the fdinfo `ticks:` line (after a timerfd_gettime: all of them). */
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

/* Expirations of a timer due `left` from now with `period`, in the next `span`. */
static long long due_in(long long left, long long period, long long span)
{
    return span < left ? 0 : 1 + (span - left) / period;
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
    for (int i = 0; i < NTIMERS; i++)
        if (fds[i] < 0) {
            printf("FAIL set-up: timerfd_create: %s\n", strerror(errno));
            return 1;
        }
    if (timerfd_settime(fds[ONE], 0, &one, NULL) || timerfd_settime(fds[TICK], 0, &tick, NULL) ||
        timerfd_settime(fds[ABS], TFD_TIMER_ABSTIME, &abs, NULL)) {
        printf("FAIL set-up: timerfd_settime: %s\n", strerror(errno));
        return 1;
    }
    /* Let a few expirations of the interval timer pile up. */
    struct timespec wait = ts_of(350 * MS);
    nanosleep(&wait, NULL);

    struct saved was[NTIMERS];
    for (int i = 0; i < NTIMERS; i++)
        if (save(fds[i], &was[i])) {
            printf("FAIL set-up: %s: fdinfo\n", names[i]);
            return 1;
        }
    struct itimerspec cur0[NTIMERS];
    if (timerfd_gettime(fds[ONE], &cur0[ONE]) || timerfd_gettime(fds[TICK], &cur0[TICK])) {
        printf("FAIL set-up: timerfd_gettime: %s\n", strerror(errno));
        return 1;
    }
    long long one_left0 = ns_of(cur0[ONE].it_value), tick_left0 = ns_of(cur0[TICK].it_value);
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

    /* One-shot: still armed, neither reset nor run down. */
    long long left = ns_of(cur[ONE].it_value);
    if (ns_of(cur[ONE].it_interval) != 0)
        FAILED("one-shot timer has interval %lld ns", ns_of(cur[ONE].it_interval));
    if (left <= 0 || readable(fds[ONE]))
        FAILED("one-shot timer fired or disarmed (time left %lld ns)", left);
    else if (left > one_left0)
        FAILED("one-shot timer has %lld ms left, more than the %lld ms before the checkpoint",
               left / MS, one_left0 / MS);
    else if (left < one_left0 - elapsed - 50 * MS)
        FAILED("one-shot timer has %lld ms left, less than the %lld ms before the checkpoint "
               "minus the %lld ms since",
               left / MS, one_left0 / MS, elapsed / MS);

    /* Interval: no expiration lost, none invented; still firing every 100 ms. */
    long long most = ticks0 + due_in(tick_left0, PERIOD, elapsed) + 1;
    long long got = read_count(fds[TICK]);
    long long read_at = now(CLOCK_MONOTONIC);
    if (got < 0)
        FAILED("interval timer read: %s", strerror((int)-got));
    else if (got < ticks0 || got > most)
        FAILED("interval timer read %lld expirations, expected %lld to %lld (%lld before the "
               "checkpoint, %lld ms since)",
               got, ticks0, most, ticks0, elapsed / MS);
    if (ns_of(cur[TICK].it_interval) != PERIOD)
        FAILED("interval timer period %lld ns, expected %lld", ns_of(cur[TICK].it_interval),
               PERIOD);
    if (ns_of(cur[TICK].it_value) <= 0 || ns_of(cur[TICK].it_value) > PERIOD)
        FAILED("interval timer next expiry in %lld ns, expected within one period",
               ns_of(cur[TICK].it_value));
    struct timespec pause = ts_of(250 * MS);
    nanosleep(&pause, NULL);
    long long slept = now(CLOCK_MONOTONIC) - read_at;
    long long again = read_count(fds[TICK]);
    if (again < slept / PERIOD - 1 || again > slept / PERIOD + 1)
        FAILED("interval timer gave %lld expirations in the %lld ms after restore's first "
               "read, expected %lld (+-1)",
               again, slept / MS, slept / PERIOD);

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
