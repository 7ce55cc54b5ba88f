#include "CModelessShim.h"

#include <pthread.h>
#include <sched.h>
#include <sys/ioctl.h>

int modeless_ioctl_ptr(int fd, unsigned long request, void *argument) {
    return ioctl(fd, request, argument);
}

int modeless_ioctl_int(int fd, unsigned long request, unsigned long argument) {
    return ioctl(fd, request, argument);
}

int modeless_pin_current_thread(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

int modeless_current_cpu(void) {
    return sched_getcpu();
}
