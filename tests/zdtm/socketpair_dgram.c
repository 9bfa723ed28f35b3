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

#include "zdtm.h"

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
