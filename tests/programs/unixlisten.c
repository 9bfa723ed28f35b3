/*
 * unixlisten.c - a process that is not mlckpt holding a unix socket where a supervisor's
 * control socket would be: binds and listens on <path>, prints "listening", then accepts
 * and closes connections until killed (or for 120 s).
 *
 * Usage:  unixlisten <path>
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2 || strlen(argv[1]) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        fprintf(stderr, "usage: unixlisten <path> (shorter than sun_path)\n");
        return 2;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strcpy(addr.sun_path, argv[1]);
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(fd, 8) != 0) {
        perror("unixlisten");
        return 1;
    }
    printf("listening\n");
    time_t end = time(NULL) + 120;
    while (time(NULL) < end) {
        int c = accept(fd, NULL, NULL);
        if (c >= 0)
            close(c);
    }
    return 0;
}
