/*
 * unlinked_maponly - files reached only through a MAP_SHARED mapping (their fds closed):
 * a memfd "mlckpt-maponly" (64 KiB) and /tmp/mlckpt-zdtm-maponly-<pid> (16 KiB), deleted.
 * Two forked children inherited both mappings.
 * After restore: each mapping keeps its data and its /proc/self/maps name
 * (`/memfd:mlckpt-maponly (deleted)`, `<path> (deleted)`), i.e. it is still that file and
 * not anonymous shared memory; nothing exists at the path; each child (told with SIGUSR2)
 * stores into one of the mappings and the parent sees the store: one object in all
 * processes, not a copy each.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "zdtm.h"
#include "shared_file.h"

#define MEMFD_SIZE (64 * 1024)
#define FILE_SIZE (16 * 1024)
#define MEMFD_LINK "/memfd:mlckpt-maponly (deleted)"
#define CHILD_AT 777
#define CHILD_MARK "stored by the child after restore"

struct maponly {
    const char *what;
    uint8_t *map;
    size_t size;
    uint8_t expect[MEMFD_SIZE];
    char link[160];
};

/* Maps fd (size bytes) shared, closes it, fills the mapping with a pattern; 0 or -1. */
static int map_and_close(struct maponly *m, int fd, size_t size, unsigned seed)
{
    m->size = size;
    if (fd < 0 || ftruncate(fd, (off_t)size) || !(m->map = map_shared(fd, size)) || close(fd))
        return -1;
    fill_pattern(m->expect, size, seed);
    memcpy(m->map, m->expect, size);
    return 0;
}

static void check(const struct maponly *m)
{
    unsigned long inode;
    char path[256] = "";
    long at;
    if (map_entry(m->map, &inode, path, sizeof path) || strcmp(path, m->link))
        FAILED("the %s's mapping is `%s`, expected `%s`", m->what, path, m->link);
    if ((at = first_difference(m->map, m->expect, m->size)) >= 0)
        FAILED("byte %ld of the %s is %u, expected %u", at, m->what, m->map[at],
               m->expect[at]);
}

int main(void)
{
    start();
    static struct maponly memfd = {.what = "map-only memfd", .link = MEMFD_LINK};
    static struct maponly file = {.what = "map-only deleted file"};
    char path[96];
    snprintf(path, sizeof path, "/tmp/mlckpt-zdtm-maponly-%d", (int)getpid());
    snprintf(file.link, sizeof file.link, "%s (deleted)", path);
    if (map_and_close(&memfd, memfd_create("mlckpt-maponly", MFD_CLOEXEC), MEMFD_SIZE, 0x77) ||
        map_and_close(&file, open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600), FILE_SIZE,
                      0x3c) ||
        unlink(path)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        unlink(path);
        return 1;
    }
    pid_t children[2];
    struct maponly *both[2] = {&memfd, &file};
    for (int i = 0; i < 2; i++) {
        children[i] = fork_or_fail();
        if (children[i] == 0)
            child_stores(both[i]->map, CHILD_AT, CHILD_MARK, sizeof CHILD_MARK);
    }
    ready_then_wait();

    check(&memfd);
    check(&file);
    if (access(path, F_OK) == 0 || errno != ENOENT)
        FAILED("something exists at %s after restore", path);
    for (int i = 0; i < 2; i++) {
        if (kill(children[i], SIGUSR2))
            FAILED("kill child: %s", strerror(errno));
        reap_child(children[i]);
        if (memcmp(both[i]->map + CHILD_AT, CHILD_MARK, sizeof CHILD_MARK))
            FAILED("the child's store into the %s is not in the parent's mapping",
                   both[i]->what);
    }
    return verdict();
}
