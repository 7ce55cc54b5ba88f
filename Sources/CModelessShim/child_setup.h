#ifndef MODELESS_CHILD_SETUP_H
#define MODELESS_CHILD_SETUP_H

#include <sys/types.h>

// What the supervisor's spawns (an instance, and a guarded one) share between fork and
// execve. Everything here is async-signal-safe: system calls only, no allocation, no stdio.

/// Makes the report pipe (close-on-exec) and forks. Returns the child's pid in the parent and
/// 0 in the child, `report` holding both ends in each; -1 with errno set and nothing left
/// open when either call fails.
pid_t modeless_fork_reporting(int report[2]);

/// Every signal but SIGKILL and SIGSTOP back to its default disposition.
void modeless_default_dispositions(void);

/// A descriptor at 3 or above (a copy, close-on-exec), so that dup2 onto 0-2 cannot clobber it.
int modeless_above_standard(int fd);

/// Closes every descriptor from `low` up, except `keep_a` and `keep_b` (-1: none): what a
/// child closes so that it inherits only what it was given (close_range, or close one by one
/// on a kernel without it).
void modeless_close_from(int low, int keep_a, int keep_b);

#endif
