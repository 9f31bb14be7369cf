/*
 * bench-malloc-thread: glibc's multi-threaded malloc benchmark
 * (benchtests/bench-malloc-thread.c), written from its published
 * description.
 *
 * Each thread owns a working set of WORKING_SET slots, empty at first, and
 * repeats until `seconds` have passed: take the next slot from a fixed
 * sequence of random slot numbers, check and free its block, allocate a block
 * of the next size from a fixed sequence of random sizes, write its pattern.
 * Sizes follow an inverse-square distribution between MIN_SIZE and MAX_SIZE
 * (most blocks small, a few up to 32 KiB). Both sequences are drawn once from
 * a fixed seed and shared read-only; thread t starts at its own offset into
 * them. Every block is freed by the thread that allocated it. Throughput is
 * iterations (one free and one malloc each) per second, summed over threads.
 *
 * Usage: bench-malloc-thread [threads] [seconds]
 * Defaults: 2 threads, 10 seconds (glibc's duration).
 */
#include <stdatomic.h>

#include "harness.h"

static const char *const WORKLOAD = "bench-malloc-thread";

enum {
    WORKING_SET = 1024,
    MIN_SIZE = 4,
    MAX_SIZE = 32768,
    SIZE_SEQUENCE = 8000,
    SLOT_SEQUENCE = WORKING_SET * 4,
};

static uint32_t sizes[SIZE_SEQUENCE];
static uint32_t slots[SLOT_SEQUENCE];
static atomic_bool stop_requested;

typedef struct churn_thread {
    pthread_t thread;
    size_t start;
    double iterations;
} churn_thread;

/* Inverse transform sampling of the density c / size^2 on [MIN_SIZE, MAX_SIZE]:
 * its CDF is (1/MIN_SIZE - 1/size) / (1/MIN_SIZE - 1/MAX_SIZE). */
static uint32_t inverse_square_size(harness_rng *rng) {
    double uniform = (double)harness_next(rng) / 18446744073709551616.0;
    double low = 1.0 / MIN_SIZE;
    double high = 1.0 / MAX_SIZE;
    double size = 1.0 / (low - uniform * (low - high));
    if (size < MIN_SIZE) {
        return MIN_SIZE;
    }
    return size > MAX_SIZE ? MAX_SIZE : (uint32_t)size;
}

static void *churn(void *argument) {
    churn_thread *self = argument;
    void *blocks[WORKING_SET] = {NULL};
    uint32_t block_sizes[WORKING_SET] = {0};
    size_t next_size = self->start % SIZE_SEQUENCE;
    size_t next_slot = self->start % SLOT_SEQUENCE;
    size_t iterations = 0;
    while (!atomic_load_explicit(&stop_requested, memory_order_relaxed)) {
        uint32_t slot = slots[next_slot];
        uint32_t size = sizes[next_size];
        next_slot = next_slot + 1 == SLOT_SEQUENCE ? 0 : next_slot + 1;
        next_size = next_size + 1 == SIZE_SEQUENCE ? 0 : next_size + 1;
        if (blocks[slot] != NULL) {
            harness_check(WORKLOAD, blocks[slot], block_sizes[slot]);
            free(blocks[slot]);
        }
        blocks[slot] = harness_malloc(WORKLOAD, size);
        block_sizes[slot] = size;
        harness_fill(blocks[slot], size);
        iterations++;
    }
    for (size_t slot = 0; slot < WORKING_SET; slot++) {
        if (blocks[slot] != NULL) {
            harness_check(WORKLOAD, blocks[slot], block_sizes[slot]);
            free(blocks[slot]);
        }
    }
    self->iterations = (double)iterations;
    return NULL;
}

int main(int argc, char **argv) {
    int threads = (int)harness_argument(WORKLOAD, argc, argv, 1, 2);
    double seconds = harness_seconds(WORKLOAD, argc, argv, 2, 10.0);

    harness_rng rng = harness_rng_new(88);
    for (size_t i = 0; i < SIZE_SEQUENCE; i++) {
        sizes[i] = inverse_square_size(&rng);
    }
    for (size_t i = 0; i < SLOT_SEQUENCE; i++) {
        slots[i] = (uint32_t)harness_below(&rng, WORKING_SET);
    }

    churn_thread *churners = harness_malloc(WORKLOAD, sizeof *churners * (size_t)threads);
    double started = harness_now();
    for (int t = 0; t < threads; t++) {
        churners[t].start = (size_t)t * 997;
        churners[t].iterations = 0;
        harness_spawn(WORKLOAD, &churners[t].thread, churn, &churners[t]);
    }
    harness_sleep(seconds);
    atomic_store(&stop_requested, true);
    double iterations = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(churners[t].thread, NULL);
        iterations += churners[t].iterations;
    }
    double elapsed = harness_now() - started;
    free(churners);
    harness_report(WORKLOAD, threads, iterations, elapsed);
    return 0;
}
