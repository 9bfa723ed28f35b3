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

#include "zdtm.h"

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
    reap_child(child);
    unlink(path);
    return verdict();
}
