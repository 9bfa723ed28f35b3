/*
 * memory_patterns - memory areas of different kinds and protections:
 *   A  8 private anonymous pages, all filled, then pages 2-3 made PROT_NONE (a guard) and
 *      pages 4-5 PROT_READ: rw- | --- | r-- | rw-
 *   R  a separate 3-page PROT_READ mapping (filled before it was made read-only)
 *   G  a separate 4-page PROT_NONE reservation, never touched
 *   F  a MAP_PRIVATE read-write mapping of a 3-page temp file, page 1 modified in memory
 *      (copy-on-write: the file keeps its bytes)
 *   O  a MAP_PRIVATE read-only mapping of the same file at offset 1 page
 *   H  the heap grown by 256 KiB with sbrk and filled
 * After restore: every page's protections in /proc/self/maps are as set up (F and O name
 * the file, O with its offset), every readable byte is as written, the file is unchanged,
 * the break is where it was and can grow, and the PROT_NONE pages of A, made readable
 * again, still hold what was written before they were protected (G reads as zeros).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

#define PG 4096
#define HEAP (256 * 1024)

static unsigned char pat(size_t i, int seed)
{
    return (unsigned char)(i * 7 + (size_t)seed * 61 + (i >> 12) * 13 + 1);
}

static void fill(unsigned char *p, size_t n, int seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = pat(i, seed);
}

static long first_wrong(const unsigned char *p, size_t n, int seed)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != pat(i, seed))
            return (long)i;
    return -1;
}

static char maps[1 << 20];

/* Reads /proc/self/maps (no stdio: no malloc, the heap must not move). */
static int read_maps(void)
{
    int fd = open("/proc/self/maps", O_RDONLY);
    if (fd < 0)
        return -1;
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, maps + n, sizeof maps - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    maps[n] = 0;
    return 0;
}

/* The maps line of the area holding `addr` (copied into `line`), or -1. */
static int find_line(const void *addr, char *line, size_t size)
{
    uintptr_t a = (uintptr_t)addr;
    for (char *l = maps; *l;) {
        char *end = strchr(l, '\n');
        size_t len = end ? (size_t)(end - l) : strlen(l);
        unsigned long lo, hi;
        if (sscanf(l, "%lx-%lx", &lo, &hi) == 2 && a >= lo && a < hi) {
            if (len >= size)
                len = size - 1;
            memcpy(line, l, len);
            line[len] = 0;
            return 0;
        }
        l += len + (end ? 1 : 0);
    }
    return -1;
}

/* Checks that the `pages` pages at `addr` have protections `perms` ("rw-p"); `file`, if
 * not NULL, must be the mapped path and `offset` the file offset of `addr`'s area start. */
static void check_perms(const char *what, const unsigned char *addr, size_t pages,
                        const char *perms, const char *file)
{
    for (size_t i = 0; i < pages; i++) {
        char line[512];
        const unsigned char *p = addr + i * PG;
        if (find_line(p, line, sizeof line)) {
            FAILED("%s page %zu (%p) is not mapped", what, i, (const void *)p);
            return;
        }
        char got[8] = "";
        sscanf(line, "%*s %7s", got);
        if (strcmp(got, perms)) {
            FAILED("%s page %zu: protections %s, expected %s (%.300s)", what, i, got, perms, line);
            return;
        }
        if (file) {
            size_t fl = strlen(file), ll = strlen(line);
            if (ll < fl || strcmp(line + ll - fl, file)) {
                FAILED("%s page %zu is not a mapping of %s: %.300s", what, i, file, line);
                return;
            }
        }
    }
}

/* File offset of the area holding `addr`, from maps. */
static long long area_offset(const void *addr)
{
    char line[512];
    unsigned long lo, hi;
    unsigned long long off;
    if (find_line(addr, line, sizeof line) ||
        sscanf(line, "%lx-%lx %*s %llx", &lo, &hi, &off) != 3)
        return -1;
    return (long long)(off + ((uintptr_t)addr - lo));
}

int main(void)
{
    start();
    char path[96];
    snprintf(path, sizeof path, "/tmp/mlckpt-zdtm-memory_patterns-%d", (int)getpid());

    unsigned char *A = mmap(NULL, 8 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned char *R = mmap(NULL, 3 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned char *G = mmap(NULL, 4 * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (A == MAP_FAILED || R == MAP_FAILED || G == MAP_FAILED) {
        printf("FAIL mmap: %s\n", strerror(errno));
        return 1;
    }
    fill(A, 8 * PG, 1);
    fill(R, 3 * PG, 2);
    if (mprotect(A + 2 * PG, 2 * PG, PROT_NONE) || mprotect(A + 4 * PG, 2 * PG, PROT_READ) ||
        mprotect(R, 3 * PG, PROT_READ)) {
        printf("FAIL mprotect: %s\n", strerror(errno));
        return 1;
    }
    static unsigned char file[3 * PG];
    fill(file, sizeof file, 3);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write_full(fd, file, sizeof file)) {
        printf("FAIL create %s: %s\n", path, strerror(errno));
        unlink(path);
        return 1;
    }
    unsigned char *F = mmap(NULL, 3 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    unsigned char *O = mmap(NULL, PG, PROT_READ, MAP_PRIVATE, fd, PG);
    close(fd);
    if (F == MAP_FAILED || O == MAP_FAILED) {
        printf("FAIL mmap %s: %s\n", path, strerror(errno));
        unlink(path);
        return 1;
    }
    fill(F + PG, PG, 4); /* copy-on-write */
    unsigned char *H = sbrk(HEAP);
    if (H == (void *)-1) {
        printf("FAIL sbrk: %s\n", strerror(errno));
        unlink(path);
        return 1;
    }
    fill(H, HEAP, 5);
    void *brk_end = sbrk(0);
    ready_then_wait();

    void *now_end = sbrk(0);
    if (now_end != brk_end)
        FAILED("the break is %p, expected %p", now_end, brk_end);
    if (read_maps())
        FAILED("read /proc/self/maps: %s", strerror(errno));
    check_perms("A", A, 2, "rw-p", NULL);
    check_perms("A guard", A + 2 * PG, 2, "---p", NULL);
    check_perms("A read-only", A + 4 * PG, 2, "r--p", NULL);
    check_perms("A tail", A + 6 * PG, 2, "rw-p", NULL);
    check_perms("R", R, 3, "r--p", NULL);
    check_perms("G", G, 4, "---p", NULL);
    check_perms("F", F, 3, "rw-p", path);
    check_perms("O", O, 1, "r--p", path);
    long long off = area_offset(O);
    if (off != PG)
        FAILED("O maps file offset %lld, expected %d", off, PG);
    off = area_offset(F);
    if (off != 0)
        FAILED("F maps file offset %lld, expected 0", off);
    char heap_line[512] = "";
    if (find_line(H, heap_line, sizeof heap_line) || !strstr(heap_line, "rw-p"))
        FAILED("the sbrk area is not a rw-p mapping: %.300s", heap_line);
    else if (find_line((unsigned char *)brk_end - 1, heap_line, sizeof heap_line) ||
             !strstr(heap_line, "[heap]"))
        FAILED("the end of the sbrk area is not in [heap]: %.300s", heap_line);

    long at;
    if ((at = first_wrong(A, 2 * PG, 1)) >= 0)
        FAILED("A differs at %ld", at);
    for (size_t i = 4 * PG; i < 8 * PG; i++)
        if (A[i] != pat(i, 1)) {
            FAILED("A differs at %zu (read-only or tail pages)", i);
            break;
        }
    if ((at = first_wrong(R, 3 * PG, 2)) >= 0)
        FAILED("R differs at %ld", at);
    if ((at = first_wrong(F, PG, 3)) >= 0)
        FAILED("F page 0 (unmodified) differs at %ld", at);
    if ((at = first_wrong(F + PG, PG, 4)) >= 0)
        FAILED("F page 1 (modified in memory) differs at %ld", at);
    for (size_t i = 2 * PG; i < 3 * PG; i++)
        if (F[i] != file[i]) {
            FAILED("F page 2 (unmodified) differs at %zu", i);
            break;
        }
    if (memcmp(O, file + PG, PG))
        FAILED("O (the file's page 1) differs from the file");
    if ((at = first_wrong(H, HEAP, 5)) >= 0)
        FAILED("the sbrk area differs at %ld", at);

    static unsigned char disk[3 * PG + 1];
    fd = open(path, O_RDONLY);
    if (fd < 0 || pread(fd, disk, sizeof disk, 0) != 3 * PG || memcmp(disk, file, 3 * PG))
        FAILED("the file changed on disk (a private mapping was written back?)");
    if (fd >= 0)
        close(fd);

    /* the mappings still work */
    F[0] = 0xee;
    fd = open(path, O_RDONLY);
    if (fd >= 0 && pread(fd, disk, 1, 0) == 1 && disk[0] == 0xee)
        FAILED("a write to the private file mapping reached the file");
    if (fd >= 0)
        close(fd);
    void *more = sbrk(PG);
    if (more != brk_end)
        FAILED("sbrk(4096) after the restore gave %p, expected %p", more, brk_end);
    else {
        memset(more, 0x5c, PG);
        sbrk(-PG);
    }
    if (mprotect(A + 2 * PG, 2 * PG, PROT_READ) || mprotect(G, 4 * PG, PROT_READ))
        FAILED("mprotect: %s", strerror(errno));
    else {
        for (size_t i = 2 * PG; i < 4 * PG; i++)
            if (A[i] != pat(i, 1)) {
                FAILED("A's PROT_NONE pages lost their contents (offset %zu)", i);
                break;
            }
        for (size_t i = 0; i < 4 * PG; i++)
            if (G[i]) {
                FAILED("the untouched PROT_NONE reservation is not zero at %zu", i);
                break;
            }
    }
    unlink(path);
    return verdict();
}
