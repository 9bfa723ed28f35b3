/* shared_memory.h - the body of shm_anon_shared.c and posix_shm.c (POSIX_SHM). */#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

#ifdef POSIX_SHM
#define UNLINK() shm_unlink(name)
#else
#define UNLINK() ((void)0)
#endif

#define SIZE (1 << 20)

static unsigned char *mem;
static int to_child[2], to_parent[2];

static unsigned char pat(size_t i, int seed)
{
    return (unsigned char)(i * 31 + (size_t)seed * 7 + (i >> 12) * 3);
}

static void paint(int seed)
{
    for (size_t i = 0; i < SIZE; i++)
        mem[i] = pat(i, seed);
}

/* Offset of the first byte that is not pattern `seed`, or -1. */
static long first_wrong(int seed)
{
    for (size_t i = 0; i < SIZE; i++)
        if (mem[i] != pat(i, seed))
            return (long)i;
    return -1;
}

/*
 * The child's side of the ping-pong over the shared memory: before the checkpoint it finds
 * pattern 1 and paints 2; after the restore it finds 2 and paints 3, then finds 4.
 * It exits with the step that went wrong (0: none).
 */
static void child_main(void)
{
    char c;
    close(to_child[1]);
    close(to_parent[0]);
    if (read_full(to_child[0], &c, 1) || first_wrong(1) >= 0)
        _exit(10);
    paint(2);
    if (write_full(to_parent[1], "b", 1))
        _exit(11);
    /* checkpoint, kill, restore */
    if (read_full(to_child[0], &c, 1))
        _exit(12);
    if (first_wrong(2) >= 0)
        _exit(13);
    paint(3);
    if (write_full(to_parent[1], "d", 1))
        _exit(14);
    if (read_full(to_child[0], &c, 1))
        _exit(15);
    _exit(first_wrong(4) >= 0 ? 16 : 0);
}

/* The parent's side before the checkpoint: paints 1, waits for the child's 2. */
static int parent_setup(pid_t child)
{
    char c;
    close(to_child[0]);
    close(to_parent[1]);
    paint(1);
    if (write_full(to_child[1], "a", 1) || read_full(to_parent[0], &c, 1)) {
        printf("FAIL set-up: the child did not answer\n");
        return -1;
    }
    long at = first_wrong(2);
    if (at >= 0) {
        printf("FAIL set-up: the child's pattern is not seen at offset %ld\n", at);
        return -1;
    }
    (void)child;
    return 0;
}

/* The parent's side after the restore. */
static void parent_verify(pid_t child)
{
    char c;
    long at = first_wrong(2);
    if (at >= 0)
        FAILED("the shared memory changed across the restore (offset %ld)", at);
    if (write_full(to_child[1], "c", 1) || read_full(to_parent[0], &c, 1))
        FAILED("the child did not answer after the restore");
    else if ((at = first_wrong(3)) >= 0)
        FAILED("the child's writes are not seen by the parent (offset %ld): not shared", at);
    else {
        paint(4);
        if (write_full(to_child[1], "e", 1))
            FAILED("write: %s", strerror(errno));
    }
    if (fail_msg[0])
        kill(child, SIGKILL);
    int st = 0;
    if (waitpid(child, &st, 0) != child)
        FAILED("waitpid: %s", strerror(errno));
    else if (WIFEXITED(st) && WEXITSTATUS(st) == 13)
        FAILED("the child's view of the shared memory changed across the restore");
    else if (WIFEXITED(st) && WEXITSTATUS(st) == 16)
        FAILED("the parent's writes are not seen by the child: not shared");
    else if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
        FAILED("child status 0x%x", st);
}

int main(void)
{
    start();
#ifdef POSIX_SHM
    char name[64];
    snprintf(name, sizeof name, "/mlckpt-zdtm-posix_shm-%d", (int)getpid());
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0 || ftruncate(fd, SIZE)) {
        printf("FAIL shm_open %s: %s\n", name, strerror(errno));
        if (fd >= 0)
            UNLINK();
        return 1;
    }
    mem = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
#else
    mem = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
#endif
    if (mem == MAP_FAILED || pipe(to_child) || pipe(to_parent)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        UNLINK();
        return 1;
    }
    pid_t child = fork();
    if (child < 0) {
        printf("FAIL fork: %s\n", strerror(errno));
        UNLINK();
        return 1;
    }
    if (child == 0)
        child_main();
    if (parent_setup(child)) {
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
        UNLINK();
        return 1;
    }
    ready_then_wait();

    parent_verify(child);
#ifdef POSIX_SHM
    /* the mapping is still backed by the object: what is in memory is in the object */
    fd = shm_open(name, O_RDONLY, 0);
    if (fd < 0) {
        FAILED("shm_open %s after the restore: %s", name, strerror(errno));
    } else {
        static unsigned char file[SIZE];
        if (pread(fd, file, SIZE, 0) != SIZE)
            FAILED("pread: %s", strerror(errno));
        else if (memcmp(file, mem, SIZE))
            FAILED("the object's contents differ from the mapping's: not mapped from it");
        close(fd);
    }
    if (shm_unlink(name))
        FAILED("shm_unlink: %s", strerror(errno));
#endif
    return verdict();
}
