/*
 * deleted_file - /tmp/mlckpt-zdtm-deleted-<pid> (mode 0640) with 200 KiB of patterned data,
 * offset in the middle (100000), mapped MAP_SHARED (one page changed through the mapping),
 * a second open file description of it (read-only, offset 5000, opened through
 * /proc/self/fd), then unlinked while open. (unlinked_maponly.c: a deleted file only
 * mapped.)
 * After restore: fcntl flags, links `<path> (deleted)`, no link count, size, permission
 * bits, owner and both offsets are right; nothing exists at the path; both fds are the
 * same inode; the contents through the fd and the mapping are the data; the mapping's
 * /proc/self/maps entry is the fd's inode, and writes through either side show in the other
 * and in the second fd.
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

#define SIZE (200 * 1024)
#define OFFSET 100000
#define OFFSET2 5000
#define MODE 0640

int main(void)
{
    start();
    static uint8_t expect[SIZE];
    char path[96], link[160], proc[64];
    snprintf(path, sizeof path, "/tmp/mlckpt-zdtm-deleted-%d", (int)getpid());
    snprintf(link, sizeof link, "%s (deleted)", path);
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    uint8_t *map = NULL;
    int fd2 = -1;
    if (fd < 0 || fchmod(fd, MODE) || ftruncate(fd, SIZE) || !(map = map_shared(fd, SIZE)) ||
        fill_file(fd, map, expect, SIZE, OFFSET, 0xc3) ||
        (fd2 = open(proc, O_RDONLY)) < 0 || lseek(fd2, OFFSET2, SEEK_SET) != OFFSET2 ||
        unlink(path)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        unlink(path);
        return 1;
    }
    struct stat st_was;
    if (fstat(fd, &st_was)) {
        printf("FAIL set-up: fstat: %s\n", strerror(errno));
        return 1;
    }
    struct fd_flags flags_was = fd_flags_of(fd), flags2_was = fd_flags_of(fd2);
    ready_then_wait();

    CHECK_FD_FLAGS("deleted file", fd, flags_was);
    CHECK_FD_FLAGS("second fd", fd2, flags2_was);
    char now[192];
    for (int i = 0; i < 2; i++) {
        int f = i ? fd2 : fd;
        if (fd_link(f, now, sizeof now) || strcmp(now, link))
            FAILED("fd %d links to `%s`, expected `%s`", f, now, link);
    }
    struct stat st, st2;
    if (fstat(fd, &st) || fstat(fd2, &st2))
        FAILED("fstat: %s", strerror(errno));
    else if (st.st_nlink != 0 || st.st_size != SIZE)
        FAILED("the file has %lu links and %lld bytes, expected 0 and %d",
               (unsigned long)st.st_nlink, (long long)st.st_size, SIZE);
    else if (st.st_ino != st2.st_ino || st.st_dev != st2.st_dev)
        FAILED("the two fds are different files (inodes %lu and %lu)",
               (unsigned long)st.st_ino, (unsigned long)st2.st_ino);
    else if ((st.st_mode & 07777) != MODE || st.st_uid != st_was.st_uid ||
             st.st_gid != st_was.st_gid)
        FAILED("the file has mode 0%o owner %u:%u, expected 0%o %u:%u", st.st_mode & 07777,
               st.st_uid, st.st_gid, MODE, st_was.st_uid, st_was.st_gid);
    if (access(path, F_OK) == 0 || errno != ENOENT)
        FAILED("something exists at %s after restore", path);
    check_offset("deleted file", fd, OFFSET);
    check_offset("second fd", fd2, OFFSET2);
    check_contents("deleted file", fd, map, expect, SIZE);
    check_one_object("deleted file", fd, map, expect, SIZE, link);
    check_contents("second fd", fd2, map, expect, SIZE);
    check_offset("deleted file (after the checks)", fd, OFFSET);
    check_offset("second fd (after the checks)", fd2, OFFSET2);
    return verdict();
}
