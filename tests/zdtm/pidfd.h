/* pidfd.h - the pidfd system calls (not wrapped by every glibc) and a poll for exit. */
#ifndef MLCKPT_PIDFD_H
#define MLCKPT_PIDFD_H

#include <fcntl.h>
#include <poll.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef PIDFD_NONBLOCK
#define PIDFD_NONBLOCK O_NONBLOCK
#endif
#ifndef P_PIDFD
#define P_PIDFD 3
#endif

__attribute__((unused)) static int pidfd_open(pid_t pid, unsigned flags)
{
    return (int)syscall(SYS_pidfd_open, pid, flags);
}

__attribute__((unused)) static int pidfd_send_signal(int pidfd, int sig)
{
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

/* Whether pidfd polls readable (the process exited) within timeout_ms. */
__attribute__((unused)) static int exited(int pidfd, int timeout_ms)
{
    struct pollfd p = {pidfd, POLLIN, 0};
    return poll(&p, 1, timeout_ms) == 1 && (p.revents & POLLIN);
}

#endif
