/*
 * unsupported_tree.c - a job whose processes hold objects mlckpt cannot checkpoint yet, in
 * two processes at once: the root holds an fd on its network namespace (its child inherits
 * it), the child a raw IP socket too (root only). A checkpoint must fail naming every one of
 * them (not only the first it
 * meets), and the job must run on untouched.
 *
 * Usage:  unsupported_tree <ticks>
 * Output: "pid <pid>", then "tick <i>" every 30 ms (printed by the root), "done child=<status>".
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    long ticks = argc > 1 ? strtol(argv[1], NULL, 10) : 60;
    printf("pid %d\n", getpid());
    int nsfd = open("/proc/self/ns/net", O_RDONLY);
    if (nsfd < 0) {
        perror("open /proc/self/ns/net");
        return 1;
    }
    pid_t child = fork();
    if (child == 0) {
        if (socket(AF_INET, SOCK_RAW, IPPROTO_ICMP) < 0)
            _exit(1);
        sleep_ms(30 * (ticks + 10));
        _exit(0);
    }
    for (long i = 1; i <= ticks; i++) {
        sleep_ms(30);
        printf("tick %ld\n", i);
    }
    int status = 0;
    waitpid(child, &status, 0);
    printf("done child=%d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    return 0;
}
