/*
 * three_levels - a chain root -> child -> grandchild, with a pipe from the grandchild
 * straight to the root holding unread data at checkpoint time. After restore the
 * grandchild's parent is still the child and the child's the root, and the data arrives
 * in order, followed by what the grandchild writes after the restore.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <sys/wait.h>

#include "zdtm.h"

int main(void)
{
    start();
    int up[2], go[2];
    if (pipe(up) || pipe(go)) {
        printf("FAIL pipe: %s\n", strerror(errno));
        return 1;
    }
    pid_t root = getpid();
    pid_t child = fork();
    if (child == 0) {
        pid_t me = getpid();
        pid_t grandchild = fork();
        if (grandchild == 0) {
            close(up[0]);
            close(go[1]);
            if (write_full(up[1], "before,", 7))
                _exit(2);
            char c;
            if (read_full(go[0], &c, 1))
                _exit(3);
            char line[64];
            int n = snprintf(line, sizeof line, "after:%d:%d", getppid() == me, 1);
            _exit(write_full(up[1], line, (size_t)n) ? 4 : 0);
        }
        close(up[0]);
        close(up[1]);
        close(go[0]);
        close(go[1]);
        int status;
        pid_t r;
        while ((r = waitpid(grandchild, &status, 0)) < 0 && errno == EINTR)
            ;
        if (r != grandchild)
            _exit(5);
        _exit(getppid() == root && WIFEXITED(status) ? WEXITSTATUS(status) : 6);
    }
    close(up[1]);
    close(go[0]);
    /* Give the grandchild time to write: its data then sits in the pipe. */
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
    ready_then_wait();
    if (write_full(go[1], "g", 1))
        FAILED("write go: %s", strerror(errno));
    char buf[64] = {0};
    size_t got = 0;
    for (;;) {
        ssize_t r = read(up[0], buf + got, sizeof buf - 1 - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    if (strcmp(buf, "before,after:1:1"))
        FAILED("the pipe carried '%s', expected 'before,after:1:1'", buf);
    int status;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status))
        FAILED("child status 0x%x (5: lost its grandchild, 6: lost its parent)", status);
    return verdict();
}
