#ifndef MODELESS_CLOSE_FROM_H
#define MODELESS_CLOSE_FROM_H

/// Closes every descriptor from `low` up, except `keep_a` and `keep_b` (-1: none): what a
/// child closes between fork and execve so that it inherits only what it was given.
/// Async-signal-safe (close_range, or close one by one on a kernel without it).
void modeless_close_from(int low, int keep_a, int keep_b);

#endif
