/*
 * append.c - exercises: regular files open for writing, their flags and offsets.
 * fd A is opened O_WRONLY|O_APPEND|O_CREAT and gets "line <i> <hex>" appended every tick.
 * fd H is the same file opened O_RDWR without O_APPEND: it wrote the header "hdr 00000000\n"
 * at offset 0 and then stands at offset 4; every tick it overwrites the 8-digit counter at
 * its current offset (no lseek before the write) and steps back with lseek(-8, SEEK_CUR).
 * A restore that loses H's offset (4) or A's O_APPEND corrupts the file.
 *
 * Usage:  append <file> <ticks>        (the file should not exist yet)
 * Output: "pid <pid>"
 *         "tick <i> pid=<pid> a_off=<fd A offset> h_off=<fd H offset> size=<st_size> hdr=<counter read back>"
 *         "final size=<st_size>"
 * Final file: "hdr <ticks, 8 digits>\n" then one "line <i> <hex>\n" per tick.
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

#define TICK_MS 30

static void write_all(int fd, const char *s, size_t n, const char *what)
{
    ssize_t w = write(fd, s, n);
    if (w != (ssize_t)n) {
        perror(what);
        exit(1);
    }
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 3) {
        fprintf(stderr, "usage: append <file> <ticks>\n");
        return 2;
    }
    const char *path = argv[1];
    long ticks = strtol(argv[2], NULL, 10);

    printf("pid %d\n", getpid());
    int fa = open(path, O_WRONLY | O_APPEND | O_CREAT, 0644);
    int fh = open(path, O_RDWR);
    if (fa < 0 || fh < 0) {
        perror(path);
        return 1;
    }
    write_all(fh, "hdr 00000000\n", 13, "header");
    if (lseek(fh, 4, SEEK_SET) != 4) {
        perror("lseek");
        return 1;
    }

    uint64_t x = 0x2545F4914F6CDD1DULL;
    for (long t = 0; t < ticks; t++) {
        char line[64], counter[24], back[9] = {0};
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        int n = snprintf(line, sizeof line, "line %ld %016llx\n", t, (unsigned long long)x);
        write_all(fa, line, (size_t)n, "append");
        snprintf(counter, sizeof counter, "%08ld", t + 1);
        write_all(fh, counter, 8, "counter");
        if (lseek(fh, -8, SEEK_CUR) < 0) {
            perror("lseek");
            return 1;
        }
        struct stat st;
        if (fstat(fa, &st) != 0 || pread(fh, back, 8, 4) != 8) {
            perror("fstat/pread");
            return 1;
        }
        printf("tick %ld pid=%d a_off=%lld h_off=%lld size=%lld hdr=%s\n", t, getpid(),
               (long long)lseek(fa, 0, SEEK_CUR), (long long)lseek(fh, 0, SEEK_CUR),
               (long long)st.st_size, back);
        sleep_ms(TICK_MS);
    }
    struct stat st;
    fstat(fa, &st);
    printf("final size=%lld\n", (long long)st.st_size);
    return 0;
}
