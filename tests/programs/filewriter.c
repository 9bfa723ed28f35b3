/*
 * filewriter.c - exercises: a large file the job writes, either only at its end or in place.
 *   append:  opens <file> O_WRONLY|O_APPEND|O_CREAT, writes 2 MiB of header lines once, then
 *            appends "line <i>\n" every tick.
 *   inplace: creates <file> of 3 MiB (O_RDWR), then every tick rewrites 4 KiB at an offset
 *            that moves through the file, and reads the whole file back for its checksum.
 * A restore must give the job the file as it was at the checkpoint.
 *
 * Usage:  filewriter <append|inplace> <file> <ticks>
 * Output: "pid <pid>"
 *         "tick <i> pid=<pid> size=<st_size> sum=<checksum of the whole file>"
 *         "final size=<st_size> sum=<checksum>"
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TICK_MS 40
#define BLOCK 4096

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static uint64_t file_sum(int fd, off_t *size)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        die("fstat");
    *size = st.st_size;
    uint64_t sum = 1469598103934665603ULL;
    static char buf[1 << 16];
    for (off_t at = 0; at < st.st_size;) {
        ssize_t n = pread(fd, buf, sizeof buf, at);
        if (n <= 0)
            die("pread");
        for (ssize_t i = 0; i < n; i++)
            sum = (sum ^ (unsigned char)buf[i]) * 1099511628211ULL;
        at += n;
    }
    return sum;
}

static void write_all_at(int fd, const char *s, size_t n, off_t at, int append)
{
    ssize_t w = append ? write(fd, s, n) : pwrite(fd, s, n, at);
    if (w != (ssize_t)n)
        die("write");
}

int main(int argc, char **argv)
{
    if (argc != 4)
        return 2;
    int append = strcmp(argv[1], "append") == 0;
    int ticks = atoi(argv[3]);
    int fd = append ? open(argv[2], O_WRONLY | O_APPEND | O_CREAT | O_TRUNC, 0644)
                    : open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0644);
    /* The checksum is read through its own fd: the writing fd may be write-only. */
    int reader = open(argv[2], O_RDONLY);
    if (fd < 0 || reader < 0)
        die("open");
    printf("pid %d\n", getpid());
    fflush(stdout);
    char block[BLOCK];
    if (append) {
        for (int i = 0; i < (2 << 20) / 64; i++) {
            int n = snprintf(block, sizeof block, "%-63d\n", i);
            write_all_at(fd, block, (size_t)n, 0, 1);
        }
    } else {
        memset(block, 'x', sizeof block);
        for (off_t at = 0; at < (3 << 20); at += BLOCK)
            write_all_at(fd, block, BLOCK, at, 0);
    }
    for (int i = 0; i < ticks; i++) {
        if (append) {
            int n = snprintf(block, sizeof block, "line %d\n", i);
            write_all_at(fd, block, (size_t)n, 0, 1);
        } else {
            memset(block, 'a' + i % 26, sizeof block);
            off_t at = ((off_t)i * 37 % 768) * BLOCK;
            write_all_at(fd, block, BLOCK, at, 0);
        }
        off_t size;
        uint64_t sum = file_sum(reader, &size);
        printf("tick %d pid=%d size=%lld sum=%016llx\n", i, getpid(), (long long)size,
               (unsigned long long)sum);
        fflush(stdout);
        struct timespec t = {0, TICK_MS * 1000000L};
        nanosleep(&t, NULL);
    }
    off_t size;
    uint64_t sum = file_sum(reader, &size);
    printf("final size=%lld sum=%016llx\n", (long long)size, (unsigned long long)sum);
    return 0;
}
