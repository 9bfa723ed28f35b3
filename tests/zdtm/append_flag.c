/*
 * append_flag - a file opened O_RDWR|O_APPEND with 100 bytes written and the offset then
 * set back to 0. After restore F_GETFL must still show O_APPEND (and O_RDWR), the offset
 * must still be 0, and a write must go to the end of the file (offset 110, size 110).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/stat.h>
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
    snprintf(path, sizeof path, "/tmp/mlckpt-zdtm-append_flag-%d", (int)getpid());
    int fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        printf("FAIL open %s: %s\n", path, strerror(errno));
        return 1;
    }
    static char data[110];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (char)('a' + i % 26);
    if (write_full(fd, data, 100) || lseek(fd, 0, SEEK_SET) != 0) {
        printf("FAIL set-up: %s\n", strerror(errno));
        unlink(path);
        return 1;
    }
    ready_then_wait();

    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || !(fl & O_APPEND))
        FAILED("F_GETFL 0%o: O_APPEND lost", fl);
    if ((fl & O_ACCMODE) != O_RDWR)
        FAILED("access mode 0%o, expected O_RDWR", fl & O_ACCMODE);
    off_t off = lseek(fd, 0, SEEK_CUR);
    if (off != 0)
        FAILED("offset %lld after the restore, expected 0", (long long)off);
    if (write_full(fd, data + 100, 10))
        FAILED("write: %s", strerror(errno));
    off = lseek(fd, 0, SEEK_CUR);
    struct stat sb;
    if (fstat(fd, &sb) || sb.st_size != 110 || off != 110)
        FAILED("after a 10-byte write: size %lld offset %lld, expected 110/110: not appended",
               (long long)sb.st_size, (long long)off);
    static char got[200];
    if (pread(fd, got, sizeof got, 0) != 110 || memcmp(got, data, 110))
        FAILED("file contents differ");
    unlink(path);
    return verdict();
}
