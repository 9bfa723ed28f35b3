/*
 * shared_file.h - checks common to memfd.c and deleted_file.c: a file with patterned data
 * that is both an open fd and a MAP_SHARED mapping. The program keeps what the file must
 * hold in `expect` (its own private memory) and updates it with every write it makes.
 */
#ifndef MLCKPT_SHARED_FILE_H
#define MLCKPT_SHARED_FILE_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zdtm.h"

/* A byte of the pattern: differs from its neighbours, from page to page and per seed. */
__attribute__((unused))
static uint8_t pattern_byte(size_t i, unsigned seed)
{
    return (uint8_t)(((i * 2654435761u) >> 11) ^ (i >> 12) ^ seed);
}

__attribute__((unused))
static void fill_pattern(uint8_t *buf, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = pattern_byte(i, seed);
}

/* The first offset where a and b differ, or -1. */
__attribute__((unused))
static long first_difference(const uint8_t *a, const uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (a[i] != b[i])
            return (long)i;
    return -1;
}

/* The file's contents read through fd (pread) and seen through map must both be `expect`. */
__attribute__((unused))
static void check_contents(const char *name, int fd, const uint8_t *map, const uint8_t *expect,
                           size_t size)
{
    uint8_t *got = malloc(size);
    if (!got) {
        FAILED("malloc");
        return;
    }
    ssize_t n = pread(fd, got, size, 0);
    long at;
    if (n != (ssize_t)size)
        FAILED("%s: pread of %zu bytes gave %zd", name, size, n);
    else if ((at = first_difference(got, expect, size)) >= 0)
        FAILED("%s: byte %ld read through the fd is %u, expected %u", name, at, got[at],
               expect[at]);
    if ((at = first_difference(map, expect, size)) >= 0)
        FAILED("%s: byte %ld of the mapping is %u, expected %u", name, at, map[at],
               expect[at]);
    free(got);
}

/*
 * The /proc/self/maps line of the mapping at `map`: its inode and path (from the sixth
 * field on) into path; -1 when there is no such mapping.
 */
__attribute__((unused))
static int map_entry(const void *map, unsigned long *inode, char *path, size_t size)
{
    FILE *f = fopen("/proc/self/maps", "re");
    if (!f)
        return -1;
    char line[512];
    int found = -1;
    while (found < 0 && fgets(line, sizeof line, f)) {
        unsigned long start;
        int end_of_fields = 0;
        if (sscanf(line, "%lx-%*x %*s %*x %*x:%*x %lu %n", &start, inode, &end_of_fields) < 2 ||
            start != (unsigned long)map)
            continue;
        snprintf(path, size, "%s", line + end_of_fields);
        path[strcspn(path, "\n")] = 0;
        found = 0;
    }
    fclose(f);
    return found;
}

/*
 * The fd and the mapping are one object: the mapping's inode and path are the fd's, a
 * pwrite through the fd shows in the mapping and a store to the mapping shows in a pread
 * (a restore that made two copies fails here). `expect` is updated with both writes.
 */
__attribute__((unused))
static void check_one_object(const char *name, int fd, uint8_t *map, uint8_t *expect,
                             size_t size, const char *link)
{
    struct stat st;
    unsigned long inode = 0;
    char path[256] = "";
    if (fstat(fd, &st)) {
        FAILED("%s: fstat: %s", name, strerror(errno));
        return;
    }
    if (map_entry(map, &inode, path, sizeof path))
        FAILED("%s: no mapping at %p in /proc/self/maps", name, (void *)map);
    else if (inode != st.st_ino || strcmp(path, link))
        FAILED("%s: the mapping is inode %lu `%s`, the fd inode %lu `%s`", name, inode, path,
               (unsigned long)st.st_ino, link);

    const char through_fd[] = "written through the fd after restore";
    size_t at = size / 3 + 17;
    if (pwrite(fd, through_fd, sizeof through_fd, (off_t)at) != (ssize_t)sizeof through_fd)
        FAILED("%s: pwrite: %s", name, strerror(errno));
    memcpy(expect + at, through_fd, sizeof through_fd);
    if (memcmp(map + at, through_fd, sizeof through_fd))
        FAILED("%s: a pwrite through the fd is not seen through the mapping", name);

    const char through_map[] = "stored through the mapping after restore";
    at = size - 4096 - 5;
    memcpy(map + at, through_map, sizeof through_map);
    memcpy(expect + at, through_map, sizeof through_map);
    char back[sizeof through_map];
    if (pread(fd, back, sizeof back, (off_t)at) != (ssize_t)sizeof back ||
        memcmp(back, through_map, sizeof back))
        FAILED("%s: a store to the mapping is not seen by pread on the fd", name);
    check_contents(name, fd, map, expect, size);
}

/* Maps fd's first `size` bytes MAP_SHARED read-write, or NULL. */
__attribute__((unused))
static uint8_t *map_shared(int fd, size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    return p == MAP_FAILED ? NULL : p;
}

/*
 * Fills the file (already `size` bytes long) with the pattern through write(2), leaves the
 * offset at `offset`, and stores through the mapping into page 3 before the checkpoint; the
 * same into `expect`. 0 or -1.
 */
__attribute__((unused))
static int fill_file(int fd, uint8_t *map, uint8_t *expect, size_t size, off_t offset,
                     unsigned seed)
{
    fill_pattern(expect, size, seed);
    if (write_full(fd, expect, size) || lseek(fd, offset, SEEK_SET) != offset)
        return -1;
    const char before[] = "stored through the mapping before the checkpoint";
    memcpy(map + 3 * 4096 + 100, before, sizeof before);
    memcpy(expect + 3 * 4096 + 100, before, sizeof before);
    return 0;
}

/* A forked child's part: after SIGUSR2 (from the parent, after restore) it stores `n`
 * bytes of `mark` at `map + at`, then exits. */
__attribute__((unused))
static void child_stores(uint8_t *map, size_t at, const char *mark, size_t n)
{
    while (!got_usr2) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    memcpy(map + at, mark, n);
    _exit(0);
}

/* lseek(fd, 0, SEEK_CUR) must be `offset`. */
__attribute__((unused))
static void check_offset(const char *name, int fd, off_t offset)
{
    off_t at = lseek(fd, 0, SEEK_CUR);
    if (at != offset)
        FAILED("%s: file offset %lld, expected %lld", name, (long long)at, (long long)offset);
}

#endif
