#include "close_from.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

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
