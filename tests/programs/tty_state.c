/*
 * tty_state N: a program on a terminal. It prints `pid <N>`, puts its terminal (fd 0) in
 * a mode of its own (no echo, ^G as VINTR, 40x100 window), then prints N `tick` lines, one
 * every 100 ms, each with what it sees of its terminal: the settings, whether it leads its
 * session, whether the terminal controls its session and it is in the foreground. On
 * SIGWINCH it prints `winch rows=R cols=C`. Exits 0.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t resized;
static void on_winch(int sig) { (void)sig; resized = 1; }

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 30;
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("pid %d\n", (int)getpid());
    struct termios t;
    if (tcgetattr(0, &t)) {
        printf("not a terminal\n");
        return 1;
    }
    t.c_lflag &= ~(ECHO | ECHOE | ECHOK);
    t.c_cc[VINTR] = 7;
    tcsetattr(0, TCSANOW, &t);
    struct winsize ws = {.ws_row = 40, .ws_col = 100};
    ioctl(0, TIOCSWINSZ, &ws);
    signal(SIGWINCH, on_winch);
    for (int i = 0; i < n; i++) {
        if (resized) {
            resized = 0;
            ioctl(0, TIOCGWINSZ, &ws);
            printf("winch rows=%d cols=%d\n", ws.ws_row, ws.ws_col);
        }
        struct termios now;
        tcgetattr(0, &now);
        printf("tick %d lflag=%o iflag=%o vintr=%d leader=%d ctty=%d fg=%d\n", i, now.c_lflag,
               now.c_iflag, now.c_cc[VINTR], getsid(0) == getpid(), tcgetsid(0) == getsid(0),
               tcgetpgrp(0) == getpgrp());
        struct timespec ts = {0, 100 * 1000 * 1000};
        while (nanosleep(&ts, &ts))
            ;
    }
    return 0;
}
