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

#include "zdtm.h"

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
