// The only C in Modeless outside the system-library wrappers: what Swift cannot import
// directly. Variadic ioctl, request numbers built by the _IO() macros of linux/vfio.h,
// GNU-only thread calls, and volatile loads and stores for device registers.
#ifndef CMODELESS_SHIM_H
#define CMODELESS_SHIM_H

#include <spawn.h>
#include <stdint.h>
#include <sys/types.h>
#include <linux/vfio.h>
#include <sys/epoll.h>  // not in Swift's Glibc module; EventPoll wraps it

/// ioctl(2) with one pointer argument; the C function is variadic, which Swift cannot call.
int modeless_ioctl_ptr(int fd, unsigned long request, void *argument);

/// ioctl(2) with one integer argument.
int modeless_ioctl_int(int fd, unsigned long request, unsigned long argument);

/// eventfd(2); glibc declares it in <sys/eventfd.h>, which Swift's Glibc module does not export.
int modeless_eventfd(unsigned int initial, int flags);

/// Pins the calling thread to one CPU (pthread_setaffinity_np). Returns 0 or an errno value.
int modeless_pin_current_thread(int cpu);

/// Names the calling thread (pthread_setname_np; at most 15 characters are kept).
void modeless_name_current_thread(const char *name);

/// The calling thread's kernel thread id (gettid).
int modeless_thread_id(void);

/// The CPU the calling thread runs on now (sched_getcpu), or -1 with errno set.
int modeless_current_cpu(void);

/// The process id and user id of the peer of a connected Unix socket (SO_PEERCRED, whose
/// struct ucred needs _GNU_SOURCE). Returns 0, or -1 with errno set.
int modeless_peer_credentials(int fd, int *pid, unsigned int *uid);

/// pidfd_open(2): a file descriptor that becomes readable when process `pid` ends (Linux 5.3;
/// glibc has no wrapper before 2.36). Returns the descriptor, or -1 with errno set.
int modeless_pidfd_open(int pid);

/// An 8-byte load with acquire ordering, for memory shared with other processes.
static inline uint64_t modeless_load_acquire64(const void *address) {
    return __atomic_load_n((const uint64_t *)address, __ATOMIC_ACQUIRE);
}

/// An 8-byte store with release ordering: every store before it is visible before it is.
static inline void modeless_store_release64(void *address, uint64_t value) {
    __atomic_store_n((uint64_t *)address, value, __ATOMIC_RELEASE);
}

/// 4-byte sequentially consistent load, store and exchange, for the flags two processes use
/// to decide which of them must wake the other (each stores its own, then loads the other's).
static inline uint32_t modeless_load_seqcst32(const void *address) {
    return __atomic_load_n((const uint32_t *)address, __ATOMIC_SEQ_CST);
}
static inline void modeless_store_seqcst32(void *address, uint32_t value) {
    __atomic_store_n((uint32_t *)address, value, __ATOMIC_SEQ_CST);
}
static inline uint32_t modeless_exchange_seqcst32(void *address, uint32_t value) {
    return __atomic_exchange_n((uint32_t *)address, value, __ATOMIC_SEQ_CST);
}

/// Tells the CPU the caller is spinning (x86 `pause`, Arm `yield`).
static inline void modeless_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/// futex(2) FUTEX_WAIT_PRIVATE: sleeps while `*address` equals `expected`, at most
/// `timeout_ns` nanoseconds (negative: no limit). Returns 0 when woken (or when the value had
/// already changed: EAGAIN), -1 with errno ETIMEDOUT or EINTR otherwise.
int modeless_futex_wait(uint32_t *address, uint32_t expected, long long timeout_ns);

/// futex(2) FUTEX_WAKE_PRIVATE: wakes up to `count` threads sleeping on `address`.
int modeless_futex_wake(uint32_t *address, int count);

/// 4-byte atomic add with sequentially consistent ordering; returns the value before.
static inline uint32_t modeless_fetch_add_seqcst32(void *address, uint32_t value) {
    return __atomic_fetch_add((uint32_t *)address, value, __ATOMIC_SEQ_CST);
}

/// memfd_create(2) with MFD_CLOEXEC and MFD_ALLOW_SEALING: anonymous memory with a file
/// descriptor, to map in two processes. Returns the descriptor, or -1 with errno set.
int modeless_memfd(const char *name);

/// pipe2(fds, O_CLOEXEC): a pipe whose ends are close-on-exec from the start.
int modeless_pipe_cloexec(int fds[2]);

/// accept4(fd, NULL, NULL, SOCK_CLOEXEC): a connection close-on-exec from the start.
int modeless_accept_cloexec(int fd);

/// posix_spawn_file_actions_addclosefrom_np: the child closes every descriptor from `low`
/// up before its program runs (after the actions added before it). Returns 0 or an errno.
int modeless_spawn_close_from(posix_spawn_file_actions_t *actions, int low);

/// Seals a memfd's size (F_SEAL_SHRINK, F_SEAL_GROW, then F_SEAL_SEAL), so that no holder of
/// the descriptor can shrink it under another's mapping (which would fault the other process).
/// Returns 0, or -1 with errno set.
int modeless_seal_size(int fd);

/// 1 if the file's size is sealed against shrinking and growing, 0 if not.
int modeless_size_is_sealed(int fd);

/// Sends `length` bytes as one message on a connected socket with `fd` attached
/// (SCM_RIGHTS), without SIGPIPE. Returns the bytes sent, or -1 with errno set.
long modeless_send_with_fd(int socket, const void *bytes, unsigned long length, int fd);

/// Receives one message of at most `length` bytes, and the descriptor attached to it, if
/// any, into `*fd` (else -1; it is made close-on-exec). Returns the length (larger than
/// `length` if the message was cut), 0 at end of stream, or -1 with errno set.
long modeless_receive_with_fd(int socket, void *bytes, unsigned long length, int *fd);

/// The most descriptors one message carries with ``modeless_send_with_fds``.
#define MODELESS_MAXIMUM_ATTACHED 4

/// Sends `length` bytes as one message with the `count` descriptors `fds` attached (1 to
/// MODELESS_MAXIMUM_ATTACHED; else EINVAL), without SIGPIPE. Returns the bytes sent, or -1.
long modeless_send_with_fds(int socket, const void *bytes, unsigned long length, const int *fds, int count);

/// Receives one message like ``modeless_receive_with_fd``, keeping up to `capacity`
/// attached descriptors (close-on-exec) in `fds` and their number in `*count`; any beyond
/// `capacity` are closed. Returns the length, 0 at end of stream, or -1 with errno set.
long modeless_receive_with_fds(int socket, void *bytes, unsigned long length, int *fds, int capacity, int *count);

// VFIO ioctl request numbers (linux/vfio.h builds them with _IO(), a macro Swift cannot import).
extern const unsigned long modeless_VFIO_GET_API_VERSION;
extern const unsigned long modeless_VFIO_CHECK_EXTENSION;
extern const unsigned long modeless_VFIO_SET_IOMMU;
extern const unsigned long modeless_VFIO_GROUP_GET_STATUS;
extern const unsigned long modeless_VFIO_GROUP_SET_CONTAINER;
extern const unsigned long modeless_VFIO_GROUP_UNSET_CONTAINER;
extern const unsigned long modeless_VFIO_GROUP_GET_DEVICE_FD;
extern const unsigned long modeless_VFIO_DEVICE_GET_INFO;
extern const unsigned long modeless_VFIO_DEVICE_GET_REGION_INFO;
extern const unsigned long modeless_VFIO_DEVICE_GET_IRQ_INFO;
extern const unsigned long modeless_VFIO_DEVICE_SET_IRQS;
extern const unsigned long modeless_VFIO_DEVICE_RESET;
extern const unsigned long modeless_VFIO_IOMMU_GET_INFO;
extern const unsigned long modeless_VFIO_IOMMU_MAP_DMA;
extern const unsigned long modeless_VFIO_IOMMU_UNMAP_DMA;

// TUN/TAP ioctl request numbers and flags (linux/if_tun.h builds the numbers with _IOW()).
extern const unsigned long modeless_TUNSETIFF;
extern const unsigned long modeless_TUNSETPERSIST;
extern const unsigned long modeless_TUNGETIFF;
extern const unsigned short modeless_IFF_TAP;
extern const unsigned short modeless_IFF_NO_PI;
extern const unsigned short modeless_IFF_PERSIST;

// Volatile device-register access: one load or store of exactly the given width, never
// merged, split, reordered with other volatile accesses, or elided by the compiler.
static inline uint8_t modeless_mmio_read8(const volatile void *address) { return *(const volatile uint8_t *)address; }
static inline uint16_t modeless_mmio_read16(const volatile void *address) { return *(const volatile uint16_t *)address; }
static inline uint32_t modeless_mmio_read32(const volatile void *address) { return *(const volatile uint32_t *)address; }
static inline uint64_t modeless_mmio_read64(const volatile void *address) { return *(const volatile uint64_t *)address; }
static inline void modeless_mmio_write8(volatile void *address, uint8_t value) { *(volatile uint8_t *)address = value; }
static inline void modeless_mmio_write16(volatile void *address, uint16_t value) { *(volatile uint16_t *)address = value; }
static inline void modeless_mmio_write32(volatile void *address, uint32_t value) { *(volatile uint32_t *)address = value; }
static inline void modeless_mmio_write64(volatile void *address, uint64_t value) { *(volatile uint64_t *)address = value; }

/// Orders all earlier memory accesses before all later ones, as seen by devices (mfence on x86).
static inline void modeless_memory_barrier(void) { __sync_synchronize(); }
/// Orders earlier stores to DMA memory before a later doorbell write (store-store).
static inline void modeless_write_barrier(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
/// Orders a status read from DMA memory before the reads that depend on it (load-load).
static inline void modeless_read_barrier(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }

/// Starts a supervised instance: fork(2), then in the child, before execve(2): default
/// signal dispositions and an empty signal mask; its own process group (setpgid); the cgroup
/// whose `cgroup.procs` is open as `cgroup_procs_fd` (if >= 0) by writing "0" to it;
/// PR_SET_PDEATHSIG with `death_signal` (if > 0), leaving at once if the parent is already
/// gone; /dev/null as standard input and `output_fd` as standard output and error;
/// `keep_fd` (if >= 0) kept open across the exec. The death signal fires when the *thread*
/// that called this ends, so call it from a thread that lives as long as its instances.
/// Returns the child's pid, or -1 with errno set (also when the exec failed in the child).
int modeless_spawn_instance(const char *path, char *const argv[], char *const envp[],
                            int output_fd, int keep_fd, int cgroup_procs_fd, int death_signal);

/// Starts a supervised instance under a guard (guard.c). The guard, this process's child,
/// leads a new process group, joins the cgroup whose `cgroup.procs` is open as
/// `cgroup_procs_fd` (if >= 0), becomes a child subreaper and gets
/// `modeless_guard_death_signal()` when the thread that called this ends
/// (PR_SET_PDEATHSIG); it then starts the instance, which stays in that group and cgroup, is
/// killed (SIGKILL) if the guard ends, and runs `path` with /dev/null as standard input,
/// `output_fd` as standard output and error, and `keep_fd` (if >= 0) kept open. The guard
/// ignores every other signal short of SIGKILL. When the instance ends, the guard kills
/// (SIGKILL) every process descended from it that is left, and ends as the instance did
/// (its exit status, or its signal). When the death signal comes, it kills every such
/// process and the instance, then itself. Returns the guard's pid (the group's) and sets
/// `instance_pid` to the instance's, or returns -1 with errno set (also when the exec failed
/// in the instance).
int modeless_spawn_guarded_instance(const char *path, char *const argv[], char *const envp[],
                                    int output_fd, int keep_fd, int cgroup_procs_fd, pid_t *instance_pid);

/// The signal a guard gets when the thread that started it ends (SIGRTMAX).
int modeless_guard_death_signal(void);

#endif
