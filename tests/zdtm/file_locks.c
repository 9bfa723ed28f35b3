/*
 * file_locks - locks held across a restore: a POSIX write lock on bytes 0..99 of file A
 * and an OFD read lock from byte 200 to its end (another open of A); flock LOCK_EX on
 * file B; a read lease on file D; and a child holding flock LOCK_SH on file C and a
 * POSIX read lock on its bytes 0..9. After
 * restore a new child checks with F_GETLK, F_OFD_GETLK and flock(LOCK_NB) that every
 * lock is held again by the same holder; the parent checks its lease with F_GETLEASE.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/file.h>

#include "zdtm.h"

static char path_a[128], path_b[128], path_c[128], path_d[128];
static int to_child[2], to_parent[2];

static int make(char *path, const char *name, int flags)
{
    snprintf(path, 128, "/tmp/mlckpt-zdtm-file_locks-%s-%d", name, (int)getpid());
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0 || write_full(fd, "0123456789abcdef", 16)) {
        printf("FAIL create %s: %s\n", path, strerror(errno));
        exit(1);
    }
    if (flags != O_RDWR) {
        close(fd);
        fd = open(path, flags);
    }
    return fd;
}

static void cleanup(void)
{
    unlink(path_a);
    unlink(path_b);
    unlink(path_c);
    unlink(path_d);
}

/* The child holding flock(LOCK_SH) on C; exits 0 when told to. */
static void holder_main(void)
{
    char c;
    close(to_child[1]);
    close(to_parent[0]);
    int fd = open(path_c, O_RDONLY);
    struct flock rd = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10};
    if (fd < 0 || flock(fd, LOCK_SH) || fcntl(fd, F_SETLK, &rd))
        _exit(10);
    if (write_full(to_parent[1], "h", 1))
        _exit(11);
    if (read_full(to_child[0], &c, 1))
        _exit(12);
    _exit(0);
}

/* The checker, forked after the restore: exits with the first check that failed. */
static void checker_main(pid_t parent, pid_t holder)
{
    int a = open(path_a, O_RDWR);
    if (a < 0)
        _exit(20);
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 10, .l_len = 5};
    if (fcntl(a, F_GETLK, &fl) || fl.l_type != F_WRLCK || fl.l_pid != parent ||
        fl.l_start != 0 || fl.l_len != 100)
        _exit(21); /* the POSIX lock */
    struct flock ofd = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 250, .l_len = 10};
    if (fcntl(a, F_OFD_GETLK, &ofd) || ofd.l_type != F_RDLCK || ofd.l_start != 200 ||
        ofd.l_len != 0)
        _exit(22); /* the OFD lock */
    struct flock free_range = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 120, .l_len = 10};
    if (fcntl(a, F_GETLK, &free_range) || free_range.l_type != F_UNLCK)
        _exit(23); /* nothing more than what was locked */
    int b = open(path_b, O_RDONLY);
    if (b < 0 || flock(b, LOCK_SH | LOCK_NB) == 0 || errno != EWOULDBLOCK)
        _exit(24); /* the flock LOCK_EX on B */
    int c = open(path_c, O_RDONLY);
    if (c < 0 || flock(c, LOCK_EX | LOCK_NB) == 0 || errno != EWOULDBLOCK)
        _exit(25); /* the child's LOCK_SH on C */
    if (flock(c, LOCK_SH | LOCK_NB))
        _exit(26); /* ... which is shared */
    int cw = open(path_c, O_RDWR);
    struct flock wr = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 5, .l_len = 1};
    if (cw < 0 || fcntl(cw, F_GETLK, &wr) || wr.l_type != F_RDLCK || wr.l_pid != holder)
        _exit(27); /* the child's POSIX lock on C */
    _exit(0);
}

int main(void)
{
    start();
    int a = make(path_a, "a", O_RDWR);
    int a2 = open(path_a, O_RDWR);
    int b = make(path_b, "b", O_RDWR);
    int c = make(path_c, "c", O_RDONLY);
    int d = make(path_d, "d", O_RDONLY);
    close(c);
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 100};
    struct flock ofd = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 200, .l_len = 0};
    signal(SIGIO, SIG_IGN); /* a broken lease would send it */
    if (a2 < 0 || fcntl(a, F_SETLK, &fl) || fcntl(a2, F_OFD_SETLK, &ofd) ||
        flock(b, LOCK_EX | LOCK_NB) || fcntl(d, F_SETLEASE, F_RDLCK) || pipe(to_child) ||
        pipe(to_parent)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        cleanup();
        return 1;
    }
    pid_t holder = fork_or_fail();
    if (holder == 0)
        holder_main();
    close(to_child[0]);
    close(to_parent[1]);
    char x;
    if (read_full(to_parent[0], &x, 1)) {
        printf("FAIL set-up: the holder did not answer\n");
        cleanup();
        return 1;
    }
    ready_then_wait();

    int lease = fcntl(d, F_GETLEASE);
    if (lease != F_RDLCK)
        FAILED("the read lease on D is not held (F_GETLEASE %d)", lease);
    pid_t checker = fork_or_fail();
    if (checker == 0)
        checker_main(getppid(), holder);
    int st = 0;
    if (waitpid(checker, &st, 0) != checker || !WIFEXITED(st))
        FAILED("checker: status 0x%x", st);
    else if (WEXITSTATUS(st) != 0)
        FAILED("checker: check %d failed (21 POSIX, 22 OFD, 23 extra lock, 24 flock B, "
               "25/26 child's flock C, 27 child's POSIX lock on C)", WEXITSTATUS(st));
    if (write_full(to_child[1], "x", 1))
        FAILED("write: %s", strerror(errno));
    reap_child(holder);
    fcntl(d, F_SETLEASE, F_UNLCK);
    cleanup();
    return verdict();
}
