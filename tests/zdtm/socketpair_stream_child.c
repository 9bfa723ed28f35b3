/*
 * socketpair_stream_child - an AF_UNIX SOCK_STREAM socket pair between the parent and a
 * child, with data queued both ways at checkpoint time: 3000 bytes parent->child and 2000
 * bytes child->parent. After restore each side reads and checks what was queued for it,
 * then they exchange a little more; the child reports by its exit status.
 */
#define _GNU_SOURCE
#include <sys/socket.h>
#include <sys/wait.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

#define TO_CHILD 3000
#define TO_PARENT 2000

int main(void)
{
    start();
    int s[2], sync[2], go[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, s) || pipe(sync) || pipe(go)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        return 1;
    }
    static unsigned char buf[8192];
    pid_t child = fork_or_fail();
    if (child == 0) {
        close(s[0]);
        close(sync[0]);
        close(go[1]);
        fill_stream_pattern(buf, TO_PARENT, 2);
        if (write_full(s[1], buf, TO_PARENT) || write_full(sync[1], "w", 1))
            _exit(2);
        char c;
        if (read_full(go[0], &c, 1))
            _exit(3);
        int rc = check_stream_pattern(s[1], TO_CHILD, 1);
        if (rc)
            _exit(rc == -1 ? 4 : 5);
        if (write_full(s[1], "pong", 4))
            _exit(6);
        if (read_full(s[1], buf, 4) || memcmp(buf, "ping", 4))
            _exit(7);
        _exit(0);
    }
    close(s[1]);
    close(sync[1]);
    close(go[0]);
    fill_stream_pattern(buf, TO_CHILD, 1);
    char c;
    if (write_full(s[0], buf, TO_CHILD) || read_full(sync[0], &c, 1)) {
        printf("FAIL set-up writes: %s\n", strerror(errno));
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
        return 1;
    }
    ready_then_wait();

    if (write_full(go[1], "g", 1))
        FAILED("write go: %s", strerror(errno));
    int rc = check_stream_pattern(s[0], TO_PARENT, 2);
    if (rc)
        FAILED("parent: the %d queued bytes %s", TO_PARENT, rc == -1 ? "are missing" : "differ");
    if (write_full(s[0], "ping", 4))
        FAILED("write ping: %s", strerror(errno));
    if (!rc && (read_full(s[0], buf, 4) || memcmp(buf, "pong", 4)))
        FAILED("no pong from the child");
    if (fail_msg[0])
        kill(child, SIGKILL);
    int st = 0;
    if (waitpid(child, &st, 0) != child)
        FAILED("waitpid: %s", strerror(errno));
    else if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
        FAILED("child status 0x%x (exit 4/5: its %d queued bytes were missing/different)", st,
               TO_CHILD);
    return verdict();
}
