// Raw round trips of a fixed-size message between two processes through shared memory, the
// peers a logical request between containers is measured against (scripts/bench/logical-vs-raw):
//
//   pingpong spin|futex|eventfd MESSAGE_BYTES ROUND_TRIPS ROUNDS
//
// The parent writes MESSAGE_BYTES into a shared mailbox and publishes a sequence number; the
// child copies the message out, copies it back into the reply mailbox and publishes the same
// number; the parent copies the reply out. `spin` waits by polling the sequence number (the
// fastest possible on an idle machine with a core per process), `futex` sleeps in FUTEX_WAIT
// on it (the fastest sleeping hand-off), `eventfd` sleeps in read(2) on an eventfd per side.
// Prints one line per round: "ns_per_round_trip N".
#define _GNU_SOURCE
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum mode { SPIN, FUTEX, EVENTFD };

struct mailbox {
    _Atomic uint32_t sequence;
    uint32_t length;
    unsigned char bytes[65536];
};

static void futex_wait(_Atomic uint32_t *word, uint32_t value) {
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, value, NULL, NULL, 0);
}
static void futex_wake(_Atomic uint32_t *word) {
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static void publish(enum mode mode, struct mailbox *box, uint32_t sequence, int fd) {
    atomic_store_explicit(&box->sequence, sequence, memory_order_release);
    if (mode == FUTEX) futex_wake(&box->sequence);
    if (mode == EVENTFD) { uint64_t one = 1; if (write(fd, &one, 8) != 8) exit(3); }
}

static void await(enum mode mode, struct mailbox *box, uint32_t sequence, int fd) {
    if (mode == EVENTFD) { uint64_t count; if (read(fd, &count, 8) != 8) exit(3); }
    uint32_t seen;
    while ((seen = atomic_load_explicit(&box->sequence, memory_order_acquire)) != sequence) {
        if (mode == FUTEX) futex_wait(&box->sequence, seen);
        else __builtin_ia32_pause();
    }
}

static uint64_t nanoseconds(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: pingpong spin|futex|eventfd MESSAGE_BYTES ROUND_TRIPS ROUNDS\n"); return 64; }
    enum mode mode = !strcmp(argv[1], "spin") ? SPIN : !strcmp(argv[1], "futex") ? FUTEX : !strcmp(argv[1], "eventfd") ? EVENTFD : -1;
    long size = atol(argv[2]), trips = atol(argv[3]), rounds = atol(argv[4]);
    if ((int)mode < 0 || size <= 0 || size > 65536 || trips <= 0 || rounds <= 0) { fprintf(stderr, "pingpong: bad arguments\n"); return 64; }
    struct mailbox *boxes = mmap(NULL, 2 * sizeof(struct mailbox), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (boxes == MAP_FAILED) { perror("mmap"); return 71; }
    struct mailbox *request = &boxes[0], *reply = &boxes[1];
    int to_child = eventfd(0, 0), to_parent = eventfd(0, 0);
    unsigned char *message = malloc(size), *copy = malloc(size);
    memset(message, 0x5a, size);
    pid_t child = fork();
    if (child == 0) {
        for (uint32_t sequence = 1; sequence <= (uint32_t)(trips * rounds); sequence++) {
            await(mode, request, sequence, to_child);
            memcpy(copy, request->bytes, size);
            memcpy(reply->bytes, copy, size);
            publish(mode, reply, sequence, to_parent);
        }
        _exit(0);
    }
    uint32_t sequence = 0;
    for (long round = 0; round < rounds; round++) {
        uint64_t start = nanoseconds();
        for (long trip = 0; trip < trips; trip++) {
            sequence++;
            memcpy(request->bytes, message, size);
            publish(mode, request, sequence, to_child);
            await(mode, reply, sequence, to_parent);
            memcpy(copy, reply->bytes, size);
        }
        printf("ns_per_round_trip %.0f\n", (double)(nanoseconds() - start) / trips);
    }
    int status;
    waitpid(child, &status, 0);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 70;
}
