// liburing (Debian's liburing-dev 2.3) and the kernel's ublk interface as Swift sees them.
// liburing's submission and completion helpers are static inline functions over C11
// atomics; the few this project uses are wrapped here so that Swift calls plain functions.
// Debian 12's <linux/ublk_cmd.h> is Linux 6.1's: it has the structures (their layout has
// not changed since) but not the ioctl-encoded command numbers or the feature flags added
// later, so those are spelled out below from the 6.12 interface.
//
// liburing.h defines _XOPEN_SOURCE and _GNU_SOURCE before its includes, and carries its
// own copy of <linux/io_uring.h> (same include guard). Including the system headers and the
// kernel's io_uring header first keeps their definitions identical to the ones Glibc and
// swift-system's modules already hold, so the modules agree.
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/select.h>
#include <signal.h>
#include <stdbool.h>
#include <inttypes.h>
#include <time.h>
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <linux/swab.h>
#include <linux/io_uring.h>
#include <liburing.h>
#include <linux/ublk_cmd.h>
#include <sys/ioctl.h>
#include <string.h>
#include <errno.h>

/// A ring whose submission entries are 128 bytes (IORING_SETUP_SQE128) when `bigEntries`,
/// as the ublk control commands need: their 32-byte command does not fit a 64-byte entry.
static inline int modeless_uring_init(struct io_uring *ring, unsigned entries, int bigEntries) {
    struct io_uring_params params;
    memset(&params, 0, sizeof(params));
    if (bigEntries) params.flags |= IORING_SETUP_SQE128;
    return io_uring_queue_init_params(entries, ring, &params);
}

/// Queues IORING_OP_URING_CMD `commandOp` on `fd` carrying `command` (`length` bytes, at
/// most 16, or 80 on a ring made with big entries). Returns 0, or -EBUSY when the
/// submission queue is full.
static inline int modeless_uring_queue_command(struct io_uring *ring, int fd, unsigned commandOp,
                                               const void *command, unsigned length, unsigned long long userData) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (sqe == NULL) return -EBUSY;
    size_t entrySize = (ring->flags & IORING_SETUP_SQE128) ? 128 : 64;
    memset(sqe, 0, entrySize);
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = fd;
    sqe->cmd_op = commandOp;
    memcpy(sqe->cmd, command, length);
    io_uring_sqe_set_data64(sqe, userData);
    return 0;
}

/// Queues a read of an eventfd's 8-byte counter, so that writing the eventfd wakes a thread
/// waiting on the ring.
static inline int modeless_uring_queue_read(struct io_uring *ring, int fd, void *buffer, unsigned length,
                                            unsigned long long userData) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (sqe == NULL) return -EBUSY;
    io_uring_prep_read(sqe, fd, buffer, length, 0);
    io_uring_sqe_set_data64(sqe, userData);
    return 0;
}

/// The next completion if one is ready: 0 and *userData, *result set, and the entry
/// consumed; -EAGAIN if none is.
static inline int modeless_uring_take_completion(struct io_uring *ring, unsigned long long *userData, int *result) {
    struct io_uring_cqe *cqe = NULL;
    int status = io_uring_peek_cqe(ring, &cqe);
    if (status != 0) return status;
    *userData = io_uring_cqe_get_data64(cqe);
    *result = cqe->res;
    io_uring_cqe_seen(ring, cqe);
    return 0;
}

/// Waits for the next completion (retrying EINTR) and consumes it.
static inline int modeless_uring_wait_completion(struct io_uring *ring, unsigned long long *userData, int *result) {
    struct io_uring_cqe *cqe = NULL;
    int status;
    do { status = io_uring_wait_cqe(ring, &cqe); } while (status == -EINTR);
    if (status != 0) return status;
    *userData = io_uring_cqe_get_data64(cqe);
    *result = cqe->res;
    io_uring_cqe_seen(ring, cqe);
    return 0;
}

// The ublk control commands, ioctl-encoded as UBLK_F_CMD_IOCTL_ENCODE has it (6.12's
// include/uapi/linux/ublk_cmd.h): type 'u', the legacy command number, and the size of
// struct ublksrv_ctrl_cmd.
static inline unsigned modeless_ublk_control_read(unsigned number) {
    return _IOR('u', number, struct ublksrv_ctrl_cmd);
}
static inline unsigned modeless_ublk_control_read_write(unsigned number) {
    return _IOWR('u', number, struct ublksrv_ctrl_cmd);
}
/// The I/O commands on /dev/ublkcN: _IOWR('u', number, struct ublksrv_io_cmd).
static inline unsigned modeless_ublk_io_command(unsigned number) {
    return _IOWR('u', number, struct ublksrv_io_cmd);
}
