/*
 * larson: a server-like workload (Larson and Krishnan, "Memory Allocation for
 * Long-Running Server Applications", ISMM 1998), written from its published
 * description.
 *
 * Each of `threads` workers owns an array of `slots` blocks of random size in
 * [min_size, max_size]. The main thread fills every array before the clock
 * starts. A worker then repeats, rounds * slots times: pick a random slot,
 * check and free its block, allocate a new block of random size there and
 * write its pattern. When done it starts a new thread and hands it the whole
 * array, then exits, so the blocks it allocated are freed by a thread that
 * did not allocate them (and the allocator sees threads come and go). After
 * `seconds` the main thread raises a stop flag; each chain finishes its
 * current pass and stops. Throughput is slot replacements (one free and one
 * malloc each) per second, from the start until the last chain stops.
 *
 * Usage: larson [seconds] [min_size] [max_size] [slots] [rounds] [seed] [threads]
 * Defaults are mimalloc-bench's `larson 5 8 1000 5000 100 4141 <threads>`,
 * with 2 threads.
 */
#include <stdatomic.h>

#include "harness.h"

static const char *const WORKLOAD = "larson";

typedef struct larson_chain {
    void **blocks;
    size_t *sizes;
    size_t slots;
    size_t min_size;
    size_t max_size;
    size_t rounds;
    harness_rng rng;
    /* Slot replacements, summed over every thread of the chain. */
    double operations;
} larson_chain;

static atomic_bool stop_requested;
static pthread_mutex_t finished_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t finished_signal = PTHREAD_COND_INITIALIZER;
static int finished_chains;

static void replace_slot(larson_chain *chain, size_t slot) {
    harness_check(WORKLOAD, chain->blocks[slot], chain->sizes[slot]);
    free(chain->blocks[slot]);
    size_t size = harness_between(&chain->rng, chain->min_size, chain->max_size);
    void *block = harness_malloc(WORKLOAD, size);
    harness_fill(block, size);
    chain->blocks[slot] = block;
    chain->sizes[slot] = size;
}

static void *run_chain(void *argument) {
    larson_chain *chain = argument;
    size_t passes = chain->rounds * chain->slots;
    for (size_t pass = 0; pass < passes; pass++) {
        replace_slot(chain, (size_t)harness_below(&chain->rng, chain->slots));
    }
    chain->operations += (double)passes;
    if (!atomic_load_explicit(&stop_requested, memory_order_relaxed)) {
        /* The successor takes over the chain; this thread touches it no more. */
        harness_spawn_detached(WORKLOAD, run_chain, chain);
        return NULL;
    }
    pthread_mutex_lock(&finished_lock);
    finished_chains++;
    pthread_cond_signal(&finished_signal);
    pthread_mutex_unlock(&finished_lock);
    return NULL;
}

int main(int argc, char **argv) {
    double seconds = harness_seconds(WORKLOAD, argc, argv, 1, 5.0);
    size_t min_size = (size_t)harness_argument(WORKLOAD, argc, argv, 2, 8);
    size_t max_size = (size_t)harness_argument(WORKLOAD, argc, argv, 3, 1000);
    size_t slots = (size_t)harness_argument(WORKLOAD, argc, argv, 4, 5000);
    size_t rounds = (size_t)harness_argument(WORKLOAD, argc, argv, 5, 100);
    uint64_t seed = (uint64_t)harness_argument(WORKLOAD, argc, argv, 6, 4141);
    int threads = (int)harness_argument(WORKLOAD, argc, argv, 7, 2);
    if (min_size > max_size) {
        harness_fail(WORKLOAD, "min_size %zu is above max_size %zu", min_size, max_size);
    }

    larson_chain *chains = harness_malloc(WORKLOAD, sizeof *chains * (size_t)threads);
    for (int t = 0; t < threads; t++) {
        larson_chain *chain = &chains[t];
        chain->blocks = harness_malloc(WORKLOAD, sizeof *chain->blocks * slots);
        chain->sizes = harness_malloc(WORKLOAD, sizeof *chain->sizes * slots);
        chain->slots = slots;
        chain->min_size = min_size;
        chain->max_size = max_size;
        chain->rounds = rounds;
        chain->rng = harness_rng_new(seed + (uint64_t)t);
        chain->operations = 0;
        for (size_t slot = 0; slot < slots; slot++) {
            size_t size = harness_between(&chain->rng, min_size, max_size);
            chain->blocks[slot] = harness_malloc(WORKLOAD, size);
            chain->sizes[slot] = size;
            harness_fill(chain->blocks[slot], size);
        }
    }

    double started = harness_now();
    for (int t = 0; t < threads; t++) {
        harness_spawn_detached(WORKLOAD, run_chain, &chains[t]);
    }
    harness_sleep(seconds);
    atomic_store(&stop_requested, true);
    pthread_mutex_lock(&finished_lock);
    while (finished_chains < threads) {
        pthread_cond_wait(&finished_signal, &finished_lock);
    }
    pthread_mutex_unlock(&finished_lock);
    double elapsed = harness_now() - started;

    double operations = 0;
    for (int t = 0; t < threads; t++) {
        larson_chain *chain = &chains[t];
        operations += chain->operations;
        for (size_t slot = 0; slot < slots; slot++) {
            harness_check(WORKLOAD, chain->blocks[slot], chain->sizes[slot]);
            free(chain->blocks[slot]);
        }
        free(chain->blocks);
        free(chain->sizes);
    }
    free(chains);
    harness_report(WORKLOAD, threads, operations, elapsed);
    return 0;
}
