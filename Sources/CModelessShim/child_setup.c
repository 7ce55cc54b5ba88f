#include "child_setup.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

pid_t modeless_fork_reporting(int report[2]) {
    if (pipe2(report, O_CLOEXEC) != 0) return -1;
    pid_t pid = fork();
    if (pid < 0) {
        int saved = errno;
        close(report[0]);
        close(report[1]);
        errno = saved;
    }
    return pid;
}

void modeless_default_dispositions(void) {
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int signal = 1; signal < NSIG; signal++) {
        if (signal != SIGKILL && signal != SIGSTOP) sigaction(signal, &dfl, NULL);
    }
}

int modeless_above_standard(int fd) {
    return fd >= 0 && fd < 3 ? fcntl(fd, F_DUPFD_CLOEXEC, 3) : fd;
}

void modeless_close_from(int low, int keep_a, int keep_b) {
    int kept[2] = { keep_a < keep_b ? keep_a : keep_b, keep_a < keep_b ? keep_b : keep_a };
    for (int index = 0; index < 2; index++) {
        if (kept[index] < low) continue;
        if (kept[index] > low && syscall(SYS_close_range, low, kept[index] - 1, 0) != 0) {
            for (int fd = low; fd < kept[index]; fd++) close(fd);
        }
        low = kept[index] + 1;
    }
    if (syscall(SYS_close_range, low, ~0U, 0) != 0) {
        struct rlimit limit;
        int top = getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < 65536 ? (int)limit.rlim_cur : 65536;
        for (int fd = low; fd < top; fd++) close(fd);
    }
}
