/*
 * fdinfo.h - reading what /proc/self shows about an fd (its fdinfo text, one line of it,
 * the /proc/self/fd link), for the programs that compare a kernel object's state before
 * the checkpoint with the restored one's.
 */
#ifndef MLCKPT_FDINFO_H
#define MLCKPT_FDINFO_H

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define FDINFO_MAX 8192

/* The whole of /proc/self/fdinfo/<fd> into buf (NUL-terminated); -1 if unreadable. */
__attribute__((unused)) static int fdinfo_text(int fd, char *buf, size_t size)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    int f = open(path, O_RDONLY | O_CLOEXEC);
    if (f < 0)
        return -1;
    size_t done = 0;
    for (;;) {
        ssize_t r = read(f, buf + done, size - 1 - done);
        if (r <= 0)
            break;
        done += (size_t)r;
    }
    close(f);
    buf[done] = 0;
    return 0;
}

/*
 * The value of the fdinfo line starting with `key` (e.g. "eventfd-count:"), leading blanks
 * and the newline taken off, into out; 1 if found, 0 if the line is absent, -1 if the fdinfo
 * is unreadable.
 */
__attribute__((unused)) static int fdinfo_value(int fd, const char *key, char *out, size_t size)
{
    char buf[FDINFO_MAX];
    if (fdinfo_text(fd, buf, sizeof buf))
        return -1;
    size_t klen = strlen(key);
    for (char *line = buf; *line;) {
        char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        if (len >= klen && !strncmp(line, key, klen)) {
            const char *v = line + klen;
            while (*v == ' ' || *v == '\t')
                v++;
            size_t n = len - (size_t)(v - line);
            if (n >= size)
                n = size - 1;
            memcpy(out, v, n);
            out[n] = 0;
            return 1;
        }
        line = end ? end + 1 : line + len;
    }
    return 0;
}

/* Where /proc/self/fd/<fd> points, into out; -1 if unreadable. */
__attribute__((unused)) static int fd_link(int fd, char *out, size_t size)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, out, size - 1);
    if (n < 0)
        return -1;
    out[n] = 0;
    return 0;
}

/* fcntl F_GETFL and F_GETFD of fd, or -1 each when the fd is not open. */
struct fd_flags {
    int fl;
    int fd;
};

__attribute__((unused)) static struct fd_flags fd_flags_of(int fd)
{
    struct fd_flags f = {fcntl(fd, F_GETFL), fcntl(fd, F_GETFD)};
    return f;
}

/* Records a failure if fd's F_GETFL/F_GETFD differ from `was`. */
#define CHECK_FD_FLAGS(name, fdnum, was)                                              \
    do {                                                                              \
        struct fd_flags now_ = fd_flags_of(fdnum);                                    \
        if (now_.fl != (was).fl || now_.fd != (was).fd)                               \
            FAILED("%s (fd %d): F_GETFL 0%o F_GETFD %d, expected 0%o and %d", name,     \
                   fdnum, now_.fl, now_.fd, (was).fl, (was).fd);                      \
    } while (0)

#endif
