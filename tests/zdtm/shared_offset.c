/*
 * shared_offset - a regular file in /tmp opened before fork: parent and child share one
 * open file description, so one offset. Before the checkpoint the parent wrote 10 bytes
 * and the child 5 (the parent sees offset 15). After restore the offset must still be 15
 * in the parent; the child writes 100 bytes, and the parent's lseek(fd, 0, SEEK_CUR) must
 * then be 115, with the file holding all 115 bytes in order.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
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
    snprintf(path, sizeof path, "/tmp/mlckpt-zdtm-shared_offset-%d", (int)getpid());
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    int sync[2], go[2];
    if (fd < 0 || pipe(sync) || pipe(go)) {
        printf("FAIL set-up %s: %s\n", path, strerror(errno));
        unlink(path);
        return 1;
    }
    static unsigned char want[115];
    for (size_t i = 0; i < sizeof want; i++)
        want[i] = (unsigned char)('A' + i % 26);
    if (write_full(fd, want, 10)) {
        printf("FAIL write: %s\n", strerror(errno));
        unlink(path);
        return 1;
    }
    pid_t child = fork();
    if (child < 0) {
        printf("FAIL fork: %s\n", strerror(errno));
        unlink(path);
        return 1;
    }
    if (child == 0) {
        char c;
        close(sync[0]);
        close(go[1]);
        if (write_full(fd, want + 10, 5) || write_full(sync[1], "s", 1))
            _exit(2);
        if (read_full(go[0], &c, 1))
            _exit(3);
        if (write_full(fd, want + 15, 100) || write_full(sync[1], "t", 1))
            _exit(4);
        _exit(0);
    }
    close(sync[1]);
    close(go[0]);
    char c;
    off_t off = -1;
    if (read_full(sync[0], &c, 1) || (off = lseek(fd, 0, SEEK_CUR)) != 15) {
        printf("FAIL set-up: offset %lld after the child's write, expected 15\n",
               (long long)off);
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
        unlink(path);
        return 1;
    }
    ready_then_wait();

    off = lseek(fd, 0, SEEK_CUR);
    if (off != 15)
        FAILED("offset %lld after the restore, expected 15", (long long)off);
    if (write_full(go[1], "g", 1) || read_full(sync[0], &c, 1))
        FAILED("the child did not write after the restore");
    off = lseek(fd, 0, SEEK_CUR);
    if (off != 115)
        FAILED("offset %lld after the child wrote 100 bytes, expected 115: offset not shared",
               (long long)off);
    static unsigned char got[256];
    ssize_t n = pread(fd, got, sizeof got, 0);
    if (n != 115 || memcmp(got, want, 115))
        FAILED("the file has %zd bytes, expected the 115 written in order", n);
    if (fail_msg[0])
        kill(child, SIGKILL);
    int st = 0;
    if (waitpid(child, &st, 0) != child)
        FAILED("waitpid: %s", strerror(errno));
    else if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
        FAILED("child status 0x%x", st);
    unlink(path);
    return verdict();
}
