#include "CModelessShim.h"
#include "child_setup.h"

#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/mman.h>
#include <string.h>
#include <fcntl.h>
#include <errno.h>
#include <time.h>
#include <linux/futex.h>

int modeless_ioctl_ptr(int fd, unsigned long request, void *argument) {
    return ioctl(fd, request, argument);
}

int modeless_ioctl_int(int fd, unsigned long request, unsigned long argument) {
    return ioctl(fd, request, argument);
}

int modeless_eventfd(unsigned int initial, int flags) {
    return eventfd(initial, flags);
}

int modeless_pin_current_thread(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

void modeless_name_current_thread(const char *name) {
    char truncated[16];
    snprintf(truncated, sizeof truncated, "%s", name);
    pthread_setname_np(pthread_self(), truncated);
}

int modeless_thread_id(void) {
    return (int)syscall(SYS_gettid);
}

int modeless_current_cpu(void) {
    return sched_getcpu();
}

int modeless_peer_credentials(int fd, int *pid, unsigned int *uid) {
    struct ucred credentials;
    socklen_t length = sizeof credentials;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) return -1;
    *pid = credentials.pid;
    *uid = credentials.uid;
    return 0;
}

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

int modeless_pidfd_open(int pid) {
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

int modeless_futex_wait(uint32_t *address, uint32_t expected, long long timeout_ns) {
    struct timespec timeout;
    struct timespec *limit = NULL;
    if (timeout_ns >= 0) {
        timeout.tv_sec = (time_t)(timeout_ns / 1000000000LL);
        timeout.tv_nsec = (long)(timeout_ns % 1000000000LL);
        limit = &timeout;
    }
    long result = syscall(SYS_futex, address, FUTEX_WAIT_PRIVATE, expected, limit, NULL, 0);
    if (result == -1 && errno == EAGAIN) return 0;
    return (int)result;
}

int modeless_futex_wake(uint32_t *address, int count) {
    return (int)syscall(SYS_futex, address, FUTEX_WAKE_PRIVATE, count, NULL, NULL, 0);
}

int modeless_memfd(const char *name) {
    return memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
}

int modeless_pipe_cloexec(int fds[2]) {
    return pipe2(fds, O_CLOEXEC);
}

int modeless_accept_cloexec(int fd) {
    return accept4(fd, NULL, NULL, SOCK_CLOEXEC);
}

int modeless_spawn_close_from(posix_spawn_file_actions_t *actions, int low) {
    return posix_spawn_file_actions_addclosefrom_np(actions, low);
}

int modeless_seal_size(int fd) {
    return fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
}

int modeless_size_is_sealed(int fd) {
    int seals = fcntl(fd, F_GET_SEALS);
    return seals >= 0 && (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) == (F_SEAL_SHRINK | F_SEAL_GROW);
}

long modeless_send_with_fds(int socket, const void *bytes, unsigned long length, const int *fds, int count) {
    if (count < 1 || count > MODELESS_MAXIMUM_ATTACHED) { errno = EINVAL; return -1; }
    struct iovec vector = { .iov_base = (void *)bytes, .iov_len = length };
    union { struct cmsghdr header; char space[CMSG_SPACE(sizeof(int) * MODELESS_MAXIMUM_ATTACHED)]; } control;
    memset(&control, 0, sizeof control);
    struct msghdr message = { .msg_iov = &vector, .msg_iovlen = 1,
                              .msg_control = control.space, .msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)count) };
    struct cmsghdr *attached = CMSG_FIRSTHDR(&message);
    attached->cmsg_level = SOL_SOCKET;
    attached->cmsg_type = SCM_RIGHTS;
    attached->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)count);
    memcpy(CMSG_DATA(attached), fds, sizeof(int) * (size_t)count);
    return (long)sendmsg(socket, &message, MSG_NOSIGNAL);
}

long modeless_send_with_fd(int socket, const void *bytes, unsigned long length, int fd) {
    return modeless_send_with_fds(socket, bytes, length, &fd, 1);
}

long modeless_receive_with_fds(int socket, void *bytes, unsigned long length, int *fds, int capacity, int *count) {
    *count = 0;
    struct iovec vector = { .iov_base = bytes, .iov_len = length };
    union { struct cmsghdr header; char space[CMSG_SPACE(sizeof(int) * MODELESS_MAXIMUM_ATTACHED)]; } control;
    struct msghdr message = { .msg_iov = &vector, .msg_iovlen = 1,
                              .msg_control = control.space, .msg_controllen = sizeof control.space };
    ssize_t received = recvmsg(socket, &message, MSG_TRUNC | MSG_CMSG_CLOEXEC);
    if (received < 0) return -1;
    for (struct cmsghdr *attached = CMSG_FIRSTHDR(&message); attached; attached = CMSG_NXTHDR(&message, attached)) {
        if (attached->cmsg_level != SOL_SOCKET || attached->cmsg_type != SCM_RIGHTS) continue;
        int given = (int)((attached->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < given; i++) {
            int received_fd;
            memcpy(&received_fd, CMSG_DATA(attached) + i * sizeof(int), sizeof(int));
            if (*count < capacity) fds[(*count)++] = received_fd; else close(received_fd);  /* never leak */
        }
    }
    return (long)received;
}

long modeless_receive_with_fd(int socket, void *bytes, unsigned long length, int *fd) {
    int count = 0;
    long received = modeless_receive_with_fds(socket, bytes, length, fd, 1, &count);
    if (count == 0) *fd = -1;
    return received;
}

const unsigned long modeless_VFIO_GET_API_VERSION = VFIO_GET_API_VERSION;
const unsigned long modeless_VFIO_CHECK_EXTENSION = VFIO_CHECK_EXTENSION;
const unsigned long modeless_VFIO_SET_IOMMU = VFIO_SET_IOMMU;
const unsigned long modeless_VFIO_GROUP_GET_STATUS = VFIO_GROUP_GET_STATUS;
const unsigned long modeless_VFIO_GROUP_SET_CONTAINER = VFIO_GROUP_SET_CONTAINER;
const unsigned long modeless_VFIO_GROUP_UNSET_CONTAINER = VFIO_GROUP_UNSET_CONTAINER;
const unsigned long modeless_VFIO_GROUP_GET_DEVICE_FD = VFIO_GROUP_GET_DEVICE_FD;
const unsigned long modeless_VFIO_DEVICE_GET_INFO = VFIO_DEVICE_GET_INFO;
const unsigned long modeless_VFIO_DEVICE_GET_REGION_INFO = VFIO_DEVICE_GET_REGION_INFO;
const unsigned long modeless_VFIO_DEVICE_GET_IRQ_INFO = VFIO_DEVICE_GET_IRQ_INFO;
const unsigned long modeless_VFIO_DEVICE_SET_IRQS = VFIO_DEVICE_SET_IRQS;
const unsigned long modeless_VFIO_DEVICE_RESET = VFIO_DEVICE_RESET;
const unsigned long modeless_VFIO_IOMMU_GET_INFO = VFIO_IOMMU_GET_INFO;
const unsigned long modeless_VFIO_IOMMU_MAP_DMA = VFIO_IOMMU_MAP_DMA;
const unsigned long modeless_VFIO_IOMMU_UNMAP_DMA = VFIO_IOMMU_UNMAP_DMA;

#include <linux/if_tun.h>
const unsigned long modeless_TUNSETIFF = TUNSETIFF;
const unsigned long modeless_TUNSETPERSIST = TUNSETPERSIST;
const unsigned long modeless_TUNGETIFF = TUNGETIFF;
const unsigned short modeless_IFF_TAP = IFF_TAP;
const unsigned short modeless_IFF_NO_PI = IFF_NO_PI;
const unsigned short modeless_IFF_PERSIST = IFF_PERSIST;

#include <errno.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>

int modeless_spawn_instance(const char *path, char *const argv[], char *const envp[],
                            int output_fd, int keep_fd, int cgroup_procs_fd, int death_signal) {
    int report[2];
    pid_t parent = getpid();
    pid_t pid = modeless_fork_reporting(report);
    if (pid < 0) return -1;
    if (pid == 0) {
        // Only async-signal-safe calls from here to execve.
        int failure = 0;
        modeless_default_dispositions();
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        int out = modeless_above_standard(output_fd);
        int keep = modeless_above_standard(keep_fd);
        int procs = modeless_above_standard(cgroup_procs_fd);
        int reporter = modeless_above_standard(report[1]);
        if (setpgid(0, 0) != 0) failure = errno;
        if (!failure && procs >= 0 && write(procs, "0", 1) != 1) failure = errno;
        if (!failure && death_signal > 0) {
            if (prctl(PR_SET_PDEATHSIG, death_signal) != 0) failure = errno;
            else if (getppid() != parent) _exit(127);
        }
        int null = open("/dev/null", O_RDONLY);
        if (!failure && (null < 0 || dup2(null, 0) < 0 || dup2(out, 1) < 0 || dup2(out, 2) < 0)) failure = errno;
        if (null > 2) close(null);
        // Only what it was given: no descriptor of this process that lacks close-on-exec.
        if (!failure) modeless_close_from(3, keep, reporter);
        if (!failure && keep >= 0 && fcntl(keep, F_SETFD, 0) != 0) failure = errno;
        if (!failure) {
            execve(path, argv, envp);
            failure = errno;
        }
        while (write(reporter, &failure, sizeof failure) < 0 && errno == EINTR) {}
        _exit(127);
    }
    close(report[1]);
    // Both sides set the group, so it is in place whichever runs first.
    setpgid(pid, pid);
    int failure = 0;
    ssize_t count;
    do { count = read(report[0], &failure, sizeof failure); } while (count < 0 && errno == EINTR);
    close(report[0]);
    if (count == (ssize_t)sizeof failure) {
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        errno = failure;
        return -1;
    }
    return pid;
}
