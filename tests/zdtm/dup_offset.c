/*
 * dup_offset - within one process, fd and dup(fd) share one open file description: one
 * offset (set to 7 in a 20-byte file). After restore both must show offset 7; a write of 3
 * bytes through the dup must move the original's offset to 10 (and land at 7..9), and a
 * seek through the original must move the dup's.
 */
#define _GNU_SOURCE
#include <fcntl.h>
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

int main(void)
{
    start();
    char path[96];
    snprintf(path, sizeof path, "/tmp/mlckpt-zdtm-dup_offset-%d", (int)getpid());
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        printf("FAIL open %s: %s\n", path, strerror(errno));
        return 1;
    }
    int fd2 = dup(fd);
    if (fd2 < 0 || write_full(fd, "abcdefghijklmnopqrst", 20) || lseek(fd, 7, SEEK_SET) != 7) {
        printf("FAIL set-up: %s\n", strerror(errno));
        unlink(path);
        return 1;
    }
    ready_then_wait();

    off_t a = lseek(fd, 0, SEEK_CUR), b = lseek(fd2, 0, SEEK_CUR);
    if (a != 7 || b != 7)
        FAILED("offsets %lld/%lld after the restore, expected 7/7", (long long)a, (long long)b);
    if (write_full(fd2, "XYZ", 3))
        FAILED("write: %s", strerror(errno));
    a = lseek(fd, 0, SEEK_CUR);
    if (a != 10)
        FAILED("offset of fd %lld after writing 3 bytes through its dup, expected 10: not shared",
               (long long)a);
    if (lseek(fd, 2, SEEK_SET) != 2 || (b = lseek(fd2, 0, SEEK_CUR)) != 2)
        FAILED("offset of the dup %lld after seeking fd to 2: not shared", (long long)b);
    char buf[32] = "";
    if (pread(fd, buf, sizeof buf, 0) != 20 || memcmp(buf, "abcdefgXYZklmnopqrst", 20))
        FAILED("file contents %.20s, expected abcdefgXYZklmnopqrst", buf);
    int fl = fcntl(fd2, F_GETFL);
    if ((fl & O_ACCMODE) != O_RDWR)
        FAILED("the dup's access mode 0%o, expected O_RDWR", fl & O_ACCMODE);
    unlink(path);
    return verdict();
}
