/*
 * inotify - an inotify instance (IN_NONBLOCK|IN_CLOEXEC) watching two directories under
 * /tmp: A with IN_CREATE|IN_DELETE, B with IN_MODIFY. A third watch was added first and
 * removed, so the live watch descriptors are 2 and 3, not what adding two watches to a new
 * instance gives (1 and 2). The IN_IGNORED event of the removal is read before `ready`: the
 * queue is empty at the checkpoint.
 * After restore: fcntl flags and the fdinfo `inotify wd:` lines (wd, inode, device, mask,
 * ignored mask; sorted by wd) are unchanged; then creating A/new, writing B/data, creating
 * B/other (not watched for), creating a file in the unwatched third directory and deleting
 * A/new give exactly: IN_CREATE "new" on A's wd, IN_MODIFY "data" on B's wd, IN_DELETE "new"
 * on A's wd.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zdtm.h"
#include "fdinfo.h"

#define MAX_WATCHES 4

struct watch {
    unsigned wd, sdev, mask, ignored;
    unsigned long ino;
};

static int cmp_watch(const void *a, const void *b)
{
    return (int)((const struct watch *)a)->wd - (int)((const struct watch *)b)->wd;
}

/* The `inotify wd:` lines of the fdinfo, sorted by wd: their count, or -1. */
static int watches_of(int fd, struct watch *out)
{
    char buf[FDINFO_MAX];
    if (fdinfo_text(fd, buf, sizeof buf))
        return -1;
    int n = 0;
    for (char *p = strstr(buf, "inotify wd:"); p && n < MAX_WATCHES;
         p = strstr(p + 1, "inotify wd:")) {
        if (sscanf(p, "inotify wd:%x ino:%lx sdev:%x mask:%x ignored_mask:%x", &out[n].wd,
                   &out[n].ino, &out[n].sdev, &out[n].mask, &out[n].ignored) != 5)
            return -1;
        n++;
    }
    qsort(out, (size_t)n, sizeof *out, cmp_watch);
    return n;
}

static char dir_a[128], dir_b[128], dir_c[128];

static void path_in(char *out, const char *dir, const char *name)
{
    snprintf(out, PATH_MAX, "%s/%s", dir, name);
}

static int touch(const char *dir, const char *name, const char *data)
{
    char path[PATH_MAX];
    path_in(path, dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    int rc = data ? write_full(fd, data, strlen(data)) : 0;
    close(fd);
    return rc;
}

static void cleanup(void)
{
    char path[PATH_MAX];
    const char *files[][2] = {{dir_a, "new"}, {dir_b, "data"}, {dir_b, "other"},
                              {dir_c, "x"}};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        path_in(path, files[i][0], files[i][1]);
        unlink(path);
    }
    rmdir(dir_a);
    rmdir(dir_b);
    rmdir(dir_c);
}

struct want {
    int wd;
    uint32_t mask;
    const char *name;
};

int main(void)
{
    start();
    int pid = (int)getpid();
    snprintf(dir_a, sizeof dir_a, "/tmp/mlckpt-zdtm-inotify-a-%d", pid);
    snprintf(dir_b, sizeof dir_b, "/tmp/mlckpt-zdtm-inotify-b-%d", pid);
    snprintf(dir_c, sizeof dir_c, "/tmp/mlckpt-zdtm-inotify-c-%d", pid);
    int ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (ifd < 0 || mkdir(dir_a, 0700) || mkdir(dir_b, 0700) || mkdir(dir_c, 0700) ||
        touch(dir_b, "data", "before\n")) {
        printf("FAIL set-up: %s\n", strerror(errno));
        cleanup();
        return 1;
    }
    int wd_c = inotify_add_watch(ifd, dir_c, IN_ALL_EVENTS);
    int wd_a = inotify_add_watch(ifd, dir_a, IN_CREATE | IN_DELETE);
    int wd_b = inotify_add_watch(ifd, dir_b, IN_MODIFY);
    if (wd_c < 0 || wd_a < 0 || wd_b < 0 || inotify_rm_watch(ifd, wd_c)) {
        printf("FAIL set-up: inotify_add_watch: %s\n", strerror(errno));
        cleanup();
        return 1;
    }
    /* The IN_IGNORED event of the removed watch, and nothing else. */
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    ssize_t n = read(ifd, buf, sizeof buf);
    const struct inotify_event *first = (const struct inotify_event *)buf;
    if (n != (ssize_t)sizeof *first || first->wd != wd_c || first->mask != IN_IGNORED ||
        read(ifd, buf, sizeof buf) != -1 || errno != EAGAIN) {
        printf("FAIL set-up: expected exactly IN_IGNORED for the removed watch\n");
        cleanup();
        return 1;
    }
    struct watch was[MAX_WATCHES];
    int nwas = watches_of(ifd, was);
    if (nwas != 2 || was[0].wd != (unsigned)wd_a || was[1].wd != (unsigned)wd_b) {
        printf("FAIL set-up: fdinfo shows %d watches, expected wd %d and %d\n", nwas, wd_a,
               wd_b);
        cleanup();
        return 1;
    }
    struct fd_flags flags_was = fd_flags_of(ifd);
    ready_then_wait();

    CHECK_FD_FLAGS("inotify", ifd, flags_was);
    struct watch now[MAX_WATCHES];
    int nnow = watches_of(ifd, now);
    if (nnow != nwas)
        FAILED("fdinfo shows %d watches, expected %d", nnow, nwas);
    else
        for (int i = 0; i < nnow; i++)
            if (memcmp(&now[i], &was[i], sizeof now[i]))
                FAILED("watch %d: wd %d ino %lx sdev %x mask %x ignored %x, expected wd %d ino "
                       "%lx sdev %x mask %x ignored %x",
                       i, now[i].wd, now[i].ino, now[i].sdev, now[i].mask, now[i].ignored,
                       was[i].wd, was[i].ino, was[i].sdev, was[i].mask, was[i].ignored);

    char new_path[PATH_MAX];
    path_in(new_path, dir_a, "new");
    if (touch(dir_a, "new", NULL) || touch(dir_b, "data", "after\n") ||
        touch(dir_b, "other", NULL) || touch(dir_c, "x", "x") || unlink(new_path))
        FAILED("file operations: %s", strerror(errno));

    const struct want want[] = {
        {wd_a, IN_CREATE, "new"},
        {wd_b, IN_MODIFY, "data"},
        {wd_a, IN_DELETE, "new"},
    };
    const size_t nwant = sizeof want / sizeof want[0];
    n = read(ifd, buf, sizeof buf);
    if (n < 0) {
        FAILED("read events: %s", strerror(errno));
        n = 0;
    }
    size_t got = 0;
    for (char *p = buf; p < buf + n; got++) {
        const struct inotify_event *ev = (const struct inotify_event *)p;
        if (got >= nwant)
            FAILED("unexpected event %zu: wd %d mask %x name `%s`", got + 1, ev->wd, ev->mask,
                   ev->len ? ev->name : "");
        else if (ev->wd != want[got].wd || ev->mask != want[got].mask || !ev->len ||
                 strcmp(ev->name, want[got].name))
            FAILED("event %zu: wd %d mask %x name `%s`, expected wd %d mask %x name `%s`",
                   got + 1, ev->wd, ev->mask, ev->len ? ev->name : "", want[got].wd,
                   want[got].mask, want[got].name);
        p += sizeof *ev + ev->len;
    }
    if (got < nwant)
        FAILED("%zu events, expected %zu", got, nwant);
    cleanup();
    return verdict();
}
