/*
 * memfd - memfd_create("mlckpt-test", MFD_ALLOW_SEALING|MFD_CLOEXEC), 1 MiB of patterned
 * data written through the fd, offset 12345, seals F_SEAL_SHRINK|F_SEAL_GROW, also mapped
 * MAP_SHARED (and one page changed through the mapping before the checkpoint); a forked
 * child that inherited the mapping and the fd. (unlinked_maponly.c: a memfd only mapped.)
 * After restore: fcntl flags, the link `/memfd:mlckpt-test (deleted)`, size, offset and
 * seals (exactly SHRINK|GROW, and they still refuse a shrink and a grow) are right; the
 * contents read through the fd and seen through the mapping are the data; the mapping's
 * /proc/self/maps entry is the fd's inode, and writes through either side show in the other.
 * The child (told with SIGUSR2) stores into its mapping; the parent sees the store through
 * the fd and its own mapping: one object in both processes, not a copy each.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zdtm.h"
#include "fdinfo.h"
#include "shared_file.h"

#define SIZE (1 << 20)
#define OFFSET 12345
#define SEALS (F_SEAL_SHRINK | F_SEAL_GROW)
#define LINK "/memfd:mlckpt-test (deleted)"
#define CHILD_AT 777
#define CHILD_MARK "stored by the child after restore"


int main(void)
{
    start();
    static uint8_t expect[SIZE];
    int fd = memfd_create("mlckpt-test", MFD_ALLOW_SEALING | MFD_CLOEXEC);
    uint8_t *map = NULL;
    if (fd < 0 || ftruncate(fd, SIZE) || !(map = map_shared(fd, SIZE)) ||
        fill_file(fd, map, expect, SIZE, OFFSET, 0x5a) || fcntl(fd, F_ADD_SEALS, SEALS)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        return 1;
    }
    pid_t child = fork_or_fail();
    if (child == 0)
        child_stores(map, CHILD_AT, CHILD_MARK, sizeof CHILD_MARK);
    char link[256];
    if (fd_link(fd, link, sizeof link) || strcmp(link, LINK)) {
        printf("FAIL set-up: the memfd's link is `%s`, expected `%s`\n", link, LINK);
        return 1;
    }
    struct fd_flags flags_was = fd_flags_of(fd);
    ready_then_wait();

    CHECK_FD_FLAGS("memfd", fd, flags_was);
    if (fd_link(fd, link, sizeof link) || strcmp(link, LINK))
        FAILED("the memfd's link is `%s`, expected `%s`", link, LINK);
    struct stat st;
    if (fstat(fd, &st) || st.st_size != SIZE)
        FAILED("memfd size %lld, expected %d", (long long)st.st_size, SIZE);
    check_offset("memfd", fd, OFFSET);
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals != SEALS)
        FAILED("seals 0x%x, expected 0x%x", seals, SEALS);
    /* (only with the seals in place: an unsealed shrink would make the mapping SIGBUS) */
    else if (ftruncate(fd, SIZE / 2) == 0 || errno != EPERM)
        FAILED("F_SEAL_SHRINK did not refuse a shrink");
    else if (pwrite(fd, "x", 1, SIZE) != -1 || errno != EPERM)
        FAILED("F_SEAL_GROW did not refuse a write past the end");
    check_contents("memfd", fd, map, expect, SIZE);
    check_one_object("memfd", fd, map, expect, SIZE, LINK);
    check_offset("memfd (after the checks)", fd, OFFSET);

    if (kill(child, SIGUSR2))
        FAILED("kill child: %s", strerror(errno));
    reap_child(child);
    memcpy(expect + CHILD_AT, CHILD_MARK, sizeof CHILD_MARK);
    if (memcmp(map + CHILD_AT, CHILD_MARK, sizeof CHILD_MARK))
        FAILED("the child's store into the memfd is not in the parent's mapping");
    check_contents("memfd (after the child's store)", fd, map, expect, SIZE);
    return verdict();
}
