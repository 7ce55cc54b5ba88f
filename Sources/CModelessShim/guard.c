#include "CModelessShim.h"
#include "child_setup.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

// A supervised instance under a guard: the supervisor's direct child, which outlives neither
// the supervisor nor the instance, and takes every process the instance started with it.
// The guard never calls execve, so from fork to its end it makes async-signal-safe calls
// only (system calls, no allocation, no stdio).

/// Reads this thread's children (`/proc/thread-self/children`, space-separated pids) into
/// `children`; returns how many (at most `capacity`), or -1 if the file cannot be read.
static int modeless_guard_children(pid_t *children, int capacity) {
    int fd = open("/proc/thread-self/children", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    char buffer[1024];
    int count = 0;
    long value = 0;
    int digits = 0;
    ssize_t length;
    while (count < capacity && (length = read(fd, buffer, sizeof buffer)) != 0) {
        if (length < 0) {
            if (errno == EINTR) continue;
            break;
        }
        for (ssize_t index = 0; index < length && count < capacity; index++) {
            char character = buffer[index];
            if (character >= '0' && character <= '9') {
                value = value * 10 + (character - '0');
                digits++;
            } else if (digits > 0) {
                children[count++] = (pid_t)value;
                value = 0;
                digits = 0;
            }
        }
    }
    if (digits > 0 && count < capacity) children[count++] = (pid_t)value;
    close(fd);
    return count;
}

/// Kills every process descended from the guard with SIGKILL and reaps it. The guard is a
/// child subreaper, so a process whose parent died is the guard's child by then: each round
/// kills the children there are, waits for them (their own children become the guard's as
/// each one ends), and looks again, until there is none. Without the children file, the
/// guard's process group is killed instead, the guard with it.
static void modeless_guard_sweep(void) {
    pid_t children[256];
    for (;;) {
        int count = modeless_guard_children(children, 256);
        if (count < 0) {
            kill(0, SIGKILL);
            return;
        }
        int status;
        if (count == 0) {
            while (waitpid(-1, &status, WNOHANG) > 0) {}
            return;
        }
        for (int index = 0; index < count; index++) kill(children[index], SIGKILL);
        for (int index = 0; index < count; index++) {
            while (waitpid(children[index], &status, 0) < 0 && errno == EINTR) {}
        }
    }
}

/// Ends the guard as the instance ended: with its exit status, or by the signal that killed
/// it (without a core dump), so that the supervisor, which waits for the guard, sees the
/// instance's own end.
static void modeless_guard_exit_as(int status) {
    if (WIFEXITED(status)) _exit(WEXITSTATUS(status));
    int signal = WIFSIGNALED(status) ? WTERMSIG(status) : SIGKILL;
    struct rlimit none = { 0, 0 };
    setrlimit(RLIMIT_CORE, &none);
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(signal, &dfl, NULL);
    kill(getpid(), signal);
    sigset_t only;
    sigemptyset(&only);
    sigaddset(&only, signal);
    sigprocmask(SIG_UNBLOCK, &only, NULL);
    _exit(128 + signal);
}

int modeless_guard_death_signal(void) { return SIGRTMAX; }

/// What the guard and the instance tell the supervisor through the report pipe.
enum { modeless_guard_started = 0, modeless_guard_failed = 1 };

/// Writes one report (a kind and a value) whole: a pipe write this small is atomic.
static void modeless_guard_report(int reporter, int kind, int value) {
    int record[2] = { kind, value };
    while (write(reporter, record, sizeof record) < 0 && errno == EINTR) {}
}

int modeless_spawn_guarded_instance(const char *path, char *const argv[], char *const envp[],
                                    int output_fd, int keep_fd, int cgroup_procs_fd, pid_t *instance_pid) {
    int report[2];
    int death_signal = modeless_guard_death_signal();
    pid_t parent = getpid();
    pid_t guard = modeless_fork_reporting(report);
    if (guard < 0) return -1;
    if (guard == 0) {
        // The guard. Default dispositions, then every signal blocked: it takes the ones it
        // waits for with sigwaitinfo, and ignores the rest (the SIGTERM the supervisor sends
        // to the instance's group and cgroup is the instance's to act on).
        int failure = 0;
        modeless_default_dispositions();
        sigset_t all;
        sigfillset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        close(report[0]);
        int out = modeless_above_standard(output_fd);
        int keep = modeless_above_standard(keep_fd);
        int procs = modeless_above_standard(cgroup_procs_fd);
        int reporter = modeless_above_standard(report[1]);
        if (setpgid(0, 0) != 0) failure = errno;
        if (!failure && procs >= 0 && write(procs, "0", 1) != 1) failure = errno;
        if (!failure) {
            if (prctl(PR_SET_PDEATHSIG, death_signal) != 0) failure = errno;
            else if (getppid() != parent) _exit(127);
        }
        if (!failure && prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) failure = errno;
        int null = open("/dev/null", O_RDONLY);
        if (!failure && (null < 0 || dup2(null, 0) < 0 || dup2(out, 1) < 0 || dup2(out, 2) < 0)) failure = errno;
        if (!failure) modeless_close_from(3, keep, reporter);
        pid_t self = getpid();
        pid_t instance = failure ? -1 : fork();
        if (instance < 0 && !failure) failure = errno;
        if (instance == 0) {
            // The instance: no signal blocked, killed if the guard ends, then the program.
            sigset_t none;
            sigemptyset(&none);
            sigprocmask(SIG_SETMASK, &none, NULL);
            if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) failure = errno;
            else if (getppid() != self) _exit(127);
            if (!failure && keep >= 0 && fcntl(keep, F_SETFD, 0) != 0) failure = errno;
            if (!failure) {
                execve(path, argv, envp);
                failure = errno;
            }
            modeless_guard_report(reporter, modeless_guard_failed, failure);
            _exit(127);
        }
        if (failure) {
            modeless_guard_report(reporter, modeless_guard_failed, failure);
            _exit(127);
        }
        modeless_guard_report(reporter, modeless_guard_started, instance);
        close(reporter);
        dup2(0, 1);
        dup2(0, 2);
        sigset_t waited;
        sigemptyset(&waited);
        sigaddset(&waited, SIGCHLD);
        sigaddset(&waited, death_signal);
        for (;;) {
            siginfo_t info;
            int signal = sigwaitinfo(&waited, &info);
            if (signal == death_signal) {
                // The supervisor (the thread that started the guard) ended: nothing of the
                // instance may outlive it.
                modeless_guard_sweep();
                kill(0, SIGKILL);
                _exit(128 + SIGKILL);
            }
            if (signal != SIGCHLD) continue;
            int status;
            pid_t ended;
            while ((ended = waitpid(-1, &status, WNOHANG)) > 0) {
                if (ended == instance) {
                    // The instance ended: what it left goes with it.
                    modeless_guard_sweep();
                    modeless_guard_exit_as(status);
                }
            }
        }
    }
    close(report[1]);
    // Both sides set the group, so it is in place whichever runs first.
    setpgid(guard, guard);
    // The instance's pid, then nothing (its exec closed the pipe) or why it failed.
    int failure = 0;
    *instance_pid = -1;
    for (;;) {
        int record[2];
        ssize_t count = read(report[0], record, sizeof record);
        if (count < 0 && errno == EINTR) continue;
        if (count != (ssize_t)sizeof record) break;
        if (record[0] == modeless_guard_started) *instance_pid = record[1];
        else failure = record[1];
    }
    close(report[0]);
    if (failure || *instance_pid <= 0) {
        int status;
        while (waitpid(guard, &status, 0) < 0 && errno == EINTR) {}
        errno = failure ? failure : ECHILD;
        return -1;
    }
    return guard;
}
