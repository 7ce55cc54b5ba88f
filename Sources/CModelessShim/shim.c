#include "CModelessShim.h"

#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

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
