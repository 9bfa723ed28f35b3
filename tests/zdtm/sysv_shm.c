/*
 * sysv_shm - System V shared memory: segment A (a key, 3 pages and a bit) attached
 * read-write by the parent (and SHM_LOCK-ed), with its last page mprotect-ed read-only, and read-only
 * (SHM_RDONLY) by a child; segment B (IPC_PRIVATE) attached by the parent and marked for
 * removal (IPC_RMID), which the child inherits. After restore: same ids, keys, sizes, modes and attach counts, the
 * same addresses and protections, the contents of the checkpoint, writes of the parent
 * seen by the child (one segment, not two copies), the read-only page may be made writable
 * again, and detaching B destroys it (a real attach of a segment marked for removal).
 */
#define _GNU_SOURCE
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <stdint.h>

#include "zdtm.h"

#define A_SIZE (3 * 4096 + 100)
#define B_SIZE (2 * 4096)

static int to_child[2], to_parent[2];

static unsigned char pat(size_t i, int seed)
{
    return (unsigned char)(i * 13 + (size_t)seed * 5 + (i >> 12));
}

static long first_wrong(const unsigned char *m, size_t n, int seed)
{
    for (size_t i = 0; i < n; i++)
        if (m[i] != pat(i, seed))
            return (long)i;
    return -1;
}

/* The protection letters of the mapping at `addr` in /proc/self/maps ("r--s" ...). */
static int perms_at(const void *addr, char out[5])
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    int found = -1;
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f)) {
        unsigned long s, e;
        char p[5];
        if (sscanf(line, "%lx-%lx %4s", &s, &e, p) == 3 && s == (uintptr_t)addr) {
            memcpy(out, p, 5);
            found = 0;
            break;
        }
    }
    fclose(f);
    return found;
}

/* The child: A read-only. Exits with the step that went wrong (0: none). */
static void child_main(int a_id, unsigned char *inherited)
{
    char c;
    close(to_child[1]);
    close(to_parent[0]);
    if (shmdt(inherited))
        _exit(10);
    unsigned char *a = shmat(a_id, NULL, SHM_RDONLY);
    if (a == (void *)-1)
        _exit(11);
    if (first_wrong(a, A_SIZE, 1) >= 0)
        _exit(12);
    if (write_full(to_parent[1], "a", 1))
        _exit(13);
    /* checkpoint, kill, restore */
    if (read_full(to_child[0], &c, 1))
        _exit(14);
    char p[5];
    if (perms_at(a, p) || strcmp(p, "r--s"))
        _exit(15);
    if (first_wrong(a, A_SIZE, 2) >= 0) /* the parent painted 2 after the restore */
        _exit(16);
    if (write_full(to_parent[1], "b", 1))
        _exit(17);
    _exit(shmdt(a) ? 18 : 0);
}

int main(void)
{
    start();
    key_t key = (key_t)(0x4d4c0000 | (getpid() & 0xffff));
    int a_id = shmget(key, A_SIZE, IPC_CREAT | IPC_EXCL | 0640);
    int b_id = shmget(IPC_PRIVATE, B_SIZE, IPC_CREAT | 0600);
    if (a_id < 0 || b_id < 0) {
        printf("FAIL shmget: %s\n", strerror(errno));
        return 1;
    }
    unsigned char *a = shmat(a_id, NULL, 0);
    unsigned char *b = shmat(b_id, NULL, 0);
    if (a == (void *)-1 || b == (void *)-1 || pipe(to_child) || pipe(to_parent)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        shmctl(a_id, IPC_RMID, NULL);
        shmctl(b_id, IPC_RMID, NULL);
        return 1;
    }
    for (size_t i = 0; i < A_SIZE; i++)
        a[i] = pat(i, 1);
    for (size_t i = 0; i < B_SIZE; i++)
        b[i] = pat(i, 7);
    shmctl(b_id, IPC_RMID, NULL);
    if (shmctl(a_id, SHM_LOCK, NULL)) {
        printf("FAIL SHM_LOCK: %s\n", strerror(errno));
        shmctl(a_id, IPC_RMID, NULL);
        return 1;
    }
    pid_t child = fork_or_fail();
    if (child == 0)
        child_main(a_id, a);
    close(to_child[0]);
    close(to_parent[1]);
    char c;
    if (read_full(to_parent[0], &c, 1)) {
        printf("FAIL set-up: the child did not answer\n");
        kill(child, SIGKILL);
        shmctl(a_id, IPC_RMID, NULL);
        return 1;
    }
    unsigned char *last = a + 3 * 4096;
    if (mprotect(last, 4096, PROT_READ)) {
        printf("FAIL mprotect: %s\n", strerror(errno));
        kill(child, SIGKILL);
        shmctl(a_id, IPC_RMID, NULL);
        return 1;
    }
    /* every vma of an attach counts: the split of A counts twice */
    struct shmid_ds ds;
    shmctl(a_id, IPC_STAT, &ds);
    unsigned long a_nattch = (unsigned long)ds.shm_nattch;
    shmctl(b_id, IPC_STAT, &ds); /* the child inherited B */
    unsigned long b_nattch = (unsigned long)ds.shm_nattch;
    ready_then_wait();

    if (shmctl(a_id, IPC_STAT, &ds))
        FAILED("segment A (id %d) is gone: %s", a_id, strerror(errno));
    else if (ds.shm_perm.__key != key || ds.shm_segsz != A_SIZE ||
             (ds.shm_perm.mode & 0777) != 0640 || ds.shm_nattch != a_nattch)
        FAILED("segment A: key %#x size %zu mode %o nattch %lu, want %#x %d 640 %lu",
               ds.shm_perm.__key, ds.shm_segsz, ds.shm_perm.mode & 0777,
               (unsigned long)ds.shm_nattch, key, A_SIZE, a_nattch);
    else if (!(ds.shm_perm.mode & SHM_LOCKED))
        FAILED("segment A is no longer locked (SHM_LOCK)");
    if (shmget(key, 0, 0) != a_id)
        FAILED("key %#x does not lead to segment %d", key, a_id);
    if (shmctl(b_id, IPC_STAT, &ds))
        FAILED("segment B (id %d) is gone: %s", b_id, strerror(errno));
    else if (!(ds.shm_perm.mode & SHM_DEST) || ds.shm_nattch != b_nattch ||
             ds.shm_segsz != B_SIZE)
        FAILED("segment B: mode %o nattch %lu size %zu, want SHM_DEST, %lu, %d",
               ds.shm_perm.mode, (unsigned long)ds.shm_nattch, ds.shm_segsz, b_nattch, B_SIZE);
    long at;
    if ((at = first_wrong(a, A_SIZE, 1)) >= 0)
        FAILED("segment A changed across the restore (offset %ld)", at);
    if ((at = first_wrong(b, B_SIZE, 7)) >= 0)
        FAILED("segment B changed across the restore (offset %ld)", at);
    char p[5];
    if (perms_at(a, p) || strcmp(p, "rw-s"))
        FAILED("segment A's attach is not rw-s at %p", (void *)a);
    if (perms_at(last, p) || strcmp(p, "r--s"))
        FAILED("the last page of A is not r--s");
    if (mprotect(last, 4096, PROT_READ | PROT_WRITE))
        FAILED("mprotect back to read-write: %s", strerror(errno));
    if (!fail_msg[0]) {
        for (size_t i = 0; i < A_SIZE; i++)
            a[i] = pat(i, 2);
    }
    if (write_full(to_child[1], "c", 1) || read_full(to_parent[0], &c, 1))
        FAILED("the child did not answer after the restore");
    reap_child(child);
    if (fail_msg[0] == 0 && shmdt(b))
        FAILED("shmdt(B): %s", strerror(errno));
    else if (fail_msg[0] == 0 && (shmctl(b_id, IPC_STAT, &ds) == 0 || errno != EINVAL))
        FAILED("segment B outlived its last detach");
    shmdt(a);
    shmctl(a_id, IPC_RMID, NULL);
    return verdict();
}
