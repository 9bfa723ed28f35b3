/*
 * pty_pair - the program owns a pty pair, like script(1): it opens /dev/ptmx, sets the
 * slave's termios (no echo, ^G as VINTR) and window size, packet mode on the master; a
 * child leads a new session with the slave as controlling terminal and stdio, and puts
 * its own child (a process group of its own) in the foreground. Data is in flight both
 * ways: a complete and a partial input line the child has not read, output of the child
 * the parent has not read. The slave is in exclusive mode (TIOCEXCL), and a second pair is
 * left locked (no unlockpt). After restore all of it must be as it was.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <termios.h>

#include "zdtm.h"

/* An int the parent and child share (the foreground group the child sets). */
static pid_t *mmap_shared_int(void)
{
    void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        printf("FAIL mmap: %s\n", strerror(errno));
        exit(1);
    }
    return p;
}

static int report[2], go[2], locked_fd = -1;

/* The child: session leader on the slave. Reports what it sees as a string. */
static void session_leader(const char *slave, pid_t *fg)
{
    if (setsid() < 0)
        _exit(2);
    int fd = open(slave, O_RDWR); /* the first terminal a leader opens is its own */
    close(locked_fd);
    if (fd < 0 || dup2(fd, 0) < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
        _exit(3);
    if (fd > 2)
        close(fd);
    pid_t member = fork();
    if (member == 0) {
        setpgid(0, 0);
        for (;;)
            pause();
    }
    setpgid(member, member);
    if (tcsetpgrp(0, member) || ioctl(0, TIOCEXCL))
        _exit(4);
    *fg = member;
    if (write(1, "out1\nout2", 9) != 9)
        _exit(5);
    char c;
    if (read_full(go[0], &c, 1))
        _exit(6);
    char msg[256], line[64] = {0}, rest[64] = {0};
    pid_t fg_now = tcgetpgrp(0);
    /* A background read would fail: take the foreground back to read. */
    signal(SIGTTOU, SIG_IGN);
    tcsetpgrp(0, getpgrp());
    ssize_t n = read(0, line, sizeof line - 1); /* canonical: one line */
    ssize_t m = read(0, rest, sizeof rest - 1);
    int excl = 0;
    ioctl(0, TIOCGEXCL, &excl);
    snprintf(msg, sizeof msg, "excl=%d sid=%d tsid=%d fg=%d/%d line=[%.*s] rest=[%.*s]", excl,
             (int)getsid(0),
             (int)tcgetsid(0), (int)fg_now, (int)member, (int)(n > 0 ? n : 0), line,
             (int)(m > 0 ? m : 0), rest);
    kill(member, SIGKILL);
    waitpid(member, NULL, 0);
    _exit(write_full(report[1], msg, strlen(msg) + 1) ? 7 : 0);
}

int main(void)
{
    start();
    int master = posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0 || grantpt(master) || unlockpt(master)) {
        printf("FAIL posix_openpt: %s\n", strerror(errno));
        return 1;
    }
    char slave[64];
    if (ptsname_r(master, slave, sizeof slave)) {
        printf("FAIL ptsname: %s\n", strerror(errno));
        return 1;
    }
    struct termios t;
    tcgetattr(master, &t);
    t.c_lflag &= ~(ECHO | ECHOE | ECHOK);
    t.c_cc[VINTR] = 7;
    t.c_oflag |= ONLCR;
    if (tcsetattr(master, TCSANOW, &t)) {
        printf("FAIL tcsetattr: %s\n", strerror(errno));
        return 1;
    }
    struct winsize ws = {.ws_row = 33, .ws_col = 77, .ws_xpixel = 5, .ws_ypixel = 9};
    int one = 1;
    if (ioctl(master, TIOCSWINSZ, &ws) || ioctl(master, TIOCPKT, &one)) {
        printf("FAIL winsize/packet: %s\n", strerror(errno));
        return 1;
    }
    if (pipe(report) || pipe(go)) {
        printf("FAIL pipe: %s\n", strerror(errno));
        return 1;
    }
    int locked = posix_openpt(O_RDWR | O_NOCTTY);
    if (locked < 0) {
        printf("FAIL posix_openpt: %s\n", strerror(errno));
        return 1;
    }
    pid_t *fg = mmap_shared_int();
    locked_fd = locked;
    pid_t child = fork_or_fail();
    if (child == 0) {
        close(master);
        session_leader(slave, fg);
    }
    /* Input the child reads only after the restore: a line and a partial one. */
    if (write(master, "typed\npart", 10) != 10) {
        printf("FAIL write master: %s\n", strerror(errno));
        return 1;
    }
    /* Wait until the child has written its output (and set the foreground). */
    for (int i = 0; i < 500; i++) {
        int queued = 0;
        ioctl(master, FIONREAD, &queued);
        if (queued >= 9 && *fg)
            break;
        usleep(10000);
    }
    ready_then_wait();

    struct termios now;
    struct winsize wnow;
    int pkt = 0;
    if (tcgetattr(master, &now))
        FAILED("tcgetattr: %s", strerror(errno));
    else if ((now.c_lflag & ECHO) || now.c_cc[VINTR] != 7 || now.c_lflag != t.c_lflag ||
             now.c_iflag != t.c_iflag || now.c_oflag != t.c_oflag)
        FAILED("termios changed: lflag %o -> %o, VINTR %d", t.c_lflag, now.c_lflag,
               now.c_cc[VINTR]);
    if (ioctl(master, TIOCGWINSZ, &wnow) || wnow.ws_row != 33 || wnow.ws_col != 77 ||
        wnow.ws_xpixel != 5 || wnow.ws_ypixel != 9)
        FAILED("window size %dx%d", wnow.ws_row, wnow.ws_col);
    if (ioctl(master, TIOCGPKT, &pkt) || !pkt)
        FAILED("packet mode is off");
    int lock = 0;
    if (ioctl(locked, TIOCGPTLCK, &lock) || !lock)
        FAILED("the second pair is not locked");
    if (ioctl(master, TIOCGPTLCK, &lock) || lock)
        FAILED("the first pair is locked");
    char name[64];
    if (ptsname_r(master, name, sizeof name) == 0 && strcmp(name, slave))
        printf("note: %s is now %s\n", slave, name);
    char out[64] = {0};
    ssize_t n = read(master, out, sizeof out - 1);
    if (n != 11 || out[0] != TIOCPKT_DATA || memcmp(out + 1, "out1\r\nout2", 10))
        FAILED("master read %zd bytes: [%.*s]", n, (int)(n > 1 ? n - 1 : 0), out + 1);
    if (write(master, "X\n", 2) != 2)
        FAILED("write master: %s", strerror(errno));
    if (write_full(go[1], "g", 1))
        FAILED("write go: %s", strerror(errno));
    char msg[256] = {0};
    if (read(report[0], msg, sizeof msg - 1) <= 0)
        FAILED("no report from the child");
    char want[256];
    snprintf(want, sizeof want, "excl=1 sid=%d tsid=%d fg=%d/%d line=[typed\n] rest=[partX\n]",
             (int)child, (int)child, (int)*fg, (int)*fg);
    if (strcmp(msg, want))
        FAILED("child sees '%.200s', expected '%.200s'", msg, want);
    reap_child(child);
    return verdict();
}
