/*
 * umask_cwd_rlimit - process attributes: umask 027, the working directory a temp dir
 * (/tmp/mlckpt-zdtm-umask_cwd_rlimit-<pid>), RLIMIT_NOFILE's soft limit lowered to 512
 * (hard limit unchanged). After restore all three must be the same, and they must work: a
 * file created 0666 gets mode 0640, a relative path resolves in the temp dir, and no fd at
 * or above 512 can be opened.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

int main(void)
{
    start();
    char dir[96];
    snprintf(dir, sizeof dir, "/tmp/mlckpt-zdtm-umask_cwd_rlimit-%d", (int)getpid());
    if (mkdir(dir, 0700) && errno != EEXIST) {
        printf("FAIL mkdir %s: %s\n", dir, strerror(errno));
        return 1;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl)) {
        printf("FAIL getrlimit: %s\n", strerror(errno));
        rmdir(dir);
        return 1;
    }
    rlim_t hard = rl.rlim_max;
    rl.rlim_cur = 512;
    umask(027);
    if (chdir(dir) || (unlink("f") && errno != ENOENT) || setrlimit(RLIMIT_NOFILE, &rl)) {
        printf("FAIL set-up: %s\n", strerror(errno));
        rmdir(dir);
        return 1;
    }
    ready_then_wait();

    mode_t m = umask(027);
    if (m != 027)
        FAILED("umask 0%o, expected 027", (unsigned)m);
    char cwd[PATH_MAX] = "";
    if (!getcwd(cwd, sizeof cwd) || strcmp(cwd, dir))
        FAILED("cwd %.200s, expected %s", cwd, dir);
    if (getrlimit(RLIMIT_NOFILE, &rl))
        FAILED("getrlimit: %s", strerror(errno));
    else if (rl.rlim_cur != 512 || rl.rlim_max != hard)
        FAILED("RLIMIT_NOFILE %llu/%llu, expected 512/%llu", (unsigned long long)rl.rlim_cur,
               (unsigned long long)rl.rlim_max, (unsigned long long)hard);
    int fd = open("f", O_WRONLY | O_CREAT | O_EXCL, 0666);
    struct stat sb;
    char path[PATH_MAX + 8];
    snprintf(path, sizeof path, "%s/f", dir);
    if (fd < 0)
        FAILED("create ./f: %s", strerror(errno));
    else if (stat(path, &sb))
        FAILED("./f is not in %s: %s", dir, strerror(errno));
    else if ((sb.st_mode & 0777) != 0640)
        FAILED("./f created 0666 has mode 0%o, expected 0640", (unsigned)(sb.st_mode & 0777));
    if (fd >= 0)
        close(fd);
    int null = open("/dev/null", O_RDONLY);
    int high = fcntl(null, F_DUPFD, 511);
    if (high < 0 || high > 511)
        FAILED("F_DUPFD 511 gave %d (%s)", high, high < 0 ? strerror(errno) : "-");
    if (high >= 0)
        close(high);
    int over = fcntl(null, F_DUPFD, 512);
    if (!(over < 0 && errno == EINVAL))
        FAILED("F_DUPFD 512 gave %d, expected EINVAL (limit 512)", over);
    if (over >= 0)
        close(over);
    close(null);
    unlink(path);
    if (chdir("/") || rmdir(dir))
        FAILED("remove %s: %s", dir, strerror(errno));
    return verdict();
}
