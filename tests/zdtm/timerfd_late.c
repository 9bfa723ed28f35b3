/*
 * timerfd_late - a CLOCK_MONOTONIC timerfd, first expiry after 50 ms then every 10 s,
 * never read nor queried before the checkpoint: by then it has expired and the kernel has
 * not re-armed it yet (it does that on read() or timerfd_gettime()), so its fdinfo shows
 * `it_value: (0, 0)` and `ticks: 1` although it is a running periodic timer. This is the
 * state a periodic timer is in between an expiry and the program's read: the usual state
 * of a checkpointed event loop's timer.
 * After restore it must still be that periodic timer: interval 10 s, armed with at most
 * 10 s left, and its read() gives its one expiration (more only if more than 10 s passed
 * since, as the program sees time).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/timerfd.h>

#include "zdtm.h"
#include "fdinfo.h"
#include "timerfd.h"

#define FIRST (50 * MS)
#define PERIOD (10 * SEC)

int main(void)
{
    start();
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct itimerspec late = {ts_of(PERIOD), ts_of(FIRST)};
    long long set_at = now(CLOCK_MONOTONIC);
    if (fd < 0 || timerfd_settime(fd, 0, &late, NULL)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        return 1;
    }
    struct timespec wait = ts_of(200 * MS);
    nanosleep(&wait, NULL);
    char value[32] = "", ticks[32] = "";
    if (fdinfo_value(fd, "it_value:", value, sizeof value) != 1 || strcmp(value, "(0, 0)") ||
        fdinfo_value(fd, "ticks:", ticks, sizeof ticks) != 1 || strcmp(ticks, "1")) {
        printf("FAIL set-up: the timer shows it_value %s ticks %s, expected (0, 0) and 1\n",
               value, ticks);
        return 1;
    }
    ready_then_wait();

    struct itimerspec cur;
    if (timerfd_gettime(fd, &cur)) {
        FAILED("timerfd_gettime: %s", strerror(errno));
        return verdict();
    }
    long long most = 1 + (now(CLOCK_MONOTONIC) - set_at - FIRST) / PERIOD;
    long long left = ns_of(cur.it_value);
    if (ns_of(cur.it_interval) != PERIOD)
        FAILED("interval %lld ns, expected %lld (the timer had expired once, unread and not "
               "re-armed yet, at the checkpoint)",
               ns_of(cur.it_interval), PERIOD);
    else if (left <= 0 || left > PERIOD)
        FAILED("next expiry in %lld ms, expected within its 10 s period", left / MS);
    long long got = read_count(fd);
    if (got < 1 || got > most)
        FAILED("read gave %lld, expected 1 to %lld expirations", got, most);
    return verdict();
}
