// The only C in Modeless outside the system-library wrappers: what Swift cannot import
// directly (variadic ioctl, GNU-only thread calls).
#ifndef CMODELESS_SHIM_H
#define CMODELESS_SHIM_H

#include <stdint.h>
#include <sys/types.h>

/// ioctl(2) with one pointer argument; the C function is variadic, which Swift cannot call.
int modeless_ioctl_ptr(int fd, unsigned long request, void *argument);

/// ioctl(2) with one integer argument.
int modeless_ioctl_int(int fd, unsigned long request, unsigned long argument);

/// Pins the calling thread to one CPU (pthread_setaffinity_np). Returns 0 or an errno value.
int modeless_pin_current_thread(int cpu);

/// The CPU the calling thread runs on now (sched_getcpu), or -1 with errno set.
int modeless_current_cpu(void);

#endif
