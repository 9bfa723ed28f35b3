/*
 * socketpair_dgram - an AF_UNIX SOCK_DGRAM socket pair within one process with 5 datagrams
 * of different lengths queued at checkpoint time. After restore they must be received in
 * order, each whole with its own length and bytes, and then nothing more; new datagrams
 * must flow both ways.
 */
#define _GNU_SOURCE
#include <sys/socket.h>
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

static const size_t lens[5] = {1, 17, 300, 1000, 4000};

static void fill(unsigned char *buf, size_t n, int k)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = (unsigned char)(k * 41 + i * 3 + (i >> 7));
}

int main(void)
{
    start();
    int s[2];
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, s)) {
        printf("FAIL socketpair: %s\n", strerror(errno));
        return 1;
    }
    static unsigned char buf[8192];
    for (int k = 0; k < 5; k++) {
        fill(buf, lens[k], k);
        if (send(s[0], buf, lens[k], 0) != (ssize_t)lens[k]) {
            printf("FAIL send %d: %s\n", k, strerror(errno));
            return 1;
        }
    }
    ready_then_wait();

    static unsigned char want[8192];
    for (int k = 0; k < 5; k++) {
        ssize_t r = recv(s[1], buf, sizeof buf, MSG_DONTWAIT | MSG_TRUNC);
        if (r < 0) {
            FAILED("datagram %d: recv: %s", k, strerror(errno));
            break;
        }
        if ((size_t)r != lens[k]) {
            FAILED("datagram %d has %zd bytes, expected %zu", k, r, lens[k]);
            break;
        }
        fill(want, lens[k], k);
        if (memcmp(buf, want, lens[k])) {
            FAILED("datagram %d: wrong bytes", k);
            break;
        }
    }
    ssize_t r = recv(s[1], buf, sizeof buf, MSG_DONTWAIT);
    if (!(r < 0 && errno == EAGAIN))
        FAILED("a 6th datagram: recv gave %zd (%s)", r, r < 0 ? strerror(errno) : "data");
    if (send(s[0], "ab", 2, 0) != 2 || recv(s[1], buf, sizeof buf, MSG_DONTWAIT) != 2 ||
        memcmp(buf, "ab", 2))
        FAILED("new datagram 0->1 did not arrive: %s", strerror(errno));
    if (send(s[1], "cde", 3, 0) != 3 || recv(s[0], buf, sizeof buf, MSG_DONTWAIT) != 3 ||
        memcmp(buf, "cde", 3))
        FAILED("new datagram 1->0 did not arrive: %s", strerror(errno));
    return verdict();
}
