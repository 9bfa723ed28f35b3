/*
 * posix_shm_fd - a POSIX shared memory object kept open (unlike posix_shm, which closes its
 * fd after mmap): the parent maps it shared, then forks, so parent and child share the
 * mapping and the open file description (its offset, moved to 100 by the parent before the
 * checkpoint). After restore: the fd still refers to the object (fstat size, pread sees
 * what the mapping holds), the description is still shared (the child sees offset 100 and
 * its lseek moves the parent's), and a write through the child's fd shows in the parent's
 * mapping and the other way round.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "zdtm.h"

#define SIZE (64 * 1024)

static int to_child[2], to_parent[2];

static void child_main(int fd, unsigned char *m)
{
    char c;
    close(to_child[1]);
    close(to_parent[0]);
    if (read_full(to_child[0], &c, 1)) /* after the restore */
        _exit(10);
    if (lseek(fd, 0, SEEK_CUR) != 100)
        _exit(11); /* the offset is not the shared one */
    if (lseek(fd, 300, SEEK_SET) != 300)
        _exit(12);
    unsigned char v = 0x77;
    if (pwrite(fd, &v, 1, 4000) != 1)
        _exit(13);
    unsigned char got = 0;
    if (pread(fd, &got, 1, 5000) != 1 || got != m[5000] || got != 0x5c)
        _exit(14); /* the fd does not read what the mapping holds */
    if (write_full(to_parent[1], "d", 1))
        _exit(15);
    _exit(0);
}

int main(void)
{
    start();
    char name[64];
    snprintf(name, sizeof name, "/mlckpt-zdtm-posix_shm_fd-%d", (int)getpid());
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0 || ftruncate(fd, SIZE)) {
        printf("FAIL shm_open %s: %s\n", name, strerror(errno));
        return 1;
    }
    unsigned char *m = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED || pipe(to_child) || pipe(to_parent)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        shm_unlink(name);
        return 1;
    }
    for (size_t i = 0; i < SIZE; i++)
        m[i] = (unsigned char)(i * 3);
    pid_t child = fork_or_fail();
    if (child == 0)
        child_main(fd, m);
    close(to_child[0]);
    close(to_parent[1]);
    lseek(fd, 100, SEEK_SET);
    ready_then_wait();

    struct stat st;
    if (fstat(fd, &st) || st.st_size != SIZE)
        FAILED("fstat: size %lld: %s", (long long)st.st_size, strerror(errno));
    for (size_t i = 0; i < SIZE; i++)
        if (m[i] != (unsigned char)(i * 3)) {
            FAILED("the mapping changed across the restore (offset %zu)", i);
            break;
        }
    m[5000] = 0x5c;
    char c;
    if (write_full(to_child[1], "c", 1) || read_full(to_parent[0], &c, 1))
        FAILED("the child did not answer after the restore");
    else {
        if (m[4000] != 0x77)
            FAILED("the child's write through its fd is not in the parent's mapping");
        if (lseek(fd, 0, SEEK_CUR) != 300)
            FAILED("the child's lseek did not move the parent's offset: not shared");
    }
    reap_child(child);
    if (shm_unlink(name))
        FAILED("shm_unlink: %s", strerror(errno));
    return verdict();
}
