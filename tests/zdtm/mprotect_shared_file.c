/*
 * mprotect_shared_file - a file mapped MAP_SHARED read-write, its fd closed, the mapping
 * then mprotect-ed read-only. The mapping may still be made writable (VM_MAYWRITE): after
 * restore it must be read-only with the file's contents, mprotect back to read-write must
 * work, and a write through it must reach the file (still the same shared mapping).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/mman.h>

#include "zdtm.h"

#define SIZE (4 * 4096)

int main(void)
{
    start();
    char path[128];
    snprintf(path, sizeof path, "/tmp/mlckpt-zdtm-mprotect_shared_file-%d", (int)getpid());
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0 || ftruncate(fd, SIZE)) {
        printf("FAIL open %s: %s\n", path, strerror(errno));
        return 1;
    }
    unsigned char *m = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        printf("FAIL mmap: %s\n", strerror(errno));
        unlink(path);
        return 1;
    }
    for (size_t i = 0; i < SIZE; i++)
        m[i] = (unsigned char)(i * 7 + 3);
    if (msync(m, SIZE, MS_SYNC) || mprotect(m, SIZE, PROT_READ)) {
        printf("FAIL msync/mprotect: %s\n", strerror(errno));
        unlink(path);
        return 1;
    }
    ready_then_wait();

    for (size_t i = 0; i < SIZE; i++)
        if (m[i] != (unsigned char)(i * 7 + 3)) {
            FAILED("contents differ at offset %zu", i);
            break;
        }
    if (mprotect(m, SIZE, PROT_READ | PROT_WRITE))
        FAILED("mprotect back to read-write: %s", strerror(errno));
    else {
        m[5] = 0xa5;
        unsigned char c = 0;
        fd = open(path, O_RDONLY);
        if (fd < 0 || pread(fd, &c, 1, 5) != 1)
            FAILED("reading %s: %s", path, strerror(errno));
        else if (c != 0xa5)
            FAILED("a write through the mapping does not reach the file: not shared");
        if (fd >= 0)
            close(fd);
    }
    munmap(m, SIZE);
    unlink(path);
    return verdict();
}
