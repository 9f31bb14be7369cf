/*
 * mstress: mimalloc's stress test (test-stress, which mimalloc-bench runs as
 * `mstress <threads> 50 25`), written from its published description: random
 * sizes, blocks handed between threads, short and long lifetimes mixed.
 *
 * The run has `iterations` generations; each starts `threads` threads and
 * waits for them. Thread t of a generation makes 100 * scale * (t % 8 + 1)
 * short-lived allocations and half as many retained ones, interleaved at
 * random. After each allocation it frees a random short-lived block (2 times
 * in 3) and swaps a random short-lived block with a random slot of a global
 * transfer array of TRANSFER_SLOTS blocks (1 time in 4), so blocks move
 * between threads and survive into later generations. When its allocations
 * are done it frees everything it holds; the transfer array is freed at the
 * end. A block holds `words` 64-bit words, 1 to 128 (1 time in 100, 100 times
 * that), every word written on allocation and checked before the free.
 * Throughput is allocations (each freed once) per second of the whole run.
 *
 * Usage: mstress [threads] [scale] [iterations]
 * Defaults are mimalloc-bench's `<threads> 50 25`, with 2 threads.
 */
#include <stdatomic.h>

#include "harness.h"

static const char *const WORKLOAD = "mstress";

enum { TRANSFER_SLOTS = 1000 };

static _Atomic(uint64_t *) transfer[TRANSFER_SLOTS];
static size_t scale = 50;

typedef struct stress_thread {
    pthread_t thread;
    uint64_t id;
    double allocations;
} stress_thread;

/* Word 0 holds the word count; word i holds a value derived from i, the
 * count and the block's address, so a block moved or overwritten fails. */
static uint64_t word_pattern(const uint64_t *block, uint64_t words, uint64_t index) {
    return ((uint64_t)(uintptr_t)block ^ (words << 32) ^ index) * 0x9E3779B97F4A7C15ull;
}

static uint64_t *allocate_words(harness_rng *rng) {
    uint64_t words = harness_between(rng, 1, 128);
    if (harness_chance(rng, 1)) {
        words *= 100;
    }
    uint64_t *block = harness_malloc(WORKLOAD, words * sizeof *block);
    block[0] = words;
    for (uint64_t i = 1; i < words; i++) {
        block[i] = word_pattern(block, words, i);
    }
    return block;
}

static void free_words(uint64_t *block) {
    if (block == NULL) {
        return;
    }
    uint64_t words = block[0];
    if (words == 0 || words > 128 * 100) {
        harness_fail(WORKLOAD, "block %p holds a word count of %llu", (void *)block, (unsigned long long)words);
    }
    for (uint64_t i = 1; i < words; i++) {
        if (block[i] != word_pattern(block, words, i)) {
            harness_fail(WORKLOAD, "word %llu of block %p does not hold its pattern", (unsigned long long)i, (void *)block);
        }
    }
    free(block);
}

static void *stress(void *argument) {
    stress_thread *self = argument;
    harness_rng rng = harness_rng_new(self->id);
    size_t short_lived_left = 100 * scale * (size_t)(self->id % 8 + 1);
    size_t retained_left = short_lived_left / 2;
    size_t short_lived_capacity = 64;
    size_t short_lived_count = 0;
    uint64_t **short_lived = harness_malloc(WORKLOAD, short_lived_capacity * sizeof *short_lived);
    size_t retained_count = 0;
    uint64_t **retained = harness_malloc(WORKLOAD, (retained_left + 1) * sizeof *retained);

    while (short_lived_left > 0 || retained_left > 0) {
        if (retained_left == 0 || (short_lived_left > 0 && harness_chance(&rng, 50))) {
            if (short_lived_count == short_lived_capacity) {
                short_lived_capacity *= 2;
                short_lived = realloc(short_lived, short_lived_capacity * sizeof *short_lived);
                if (short_lived == NULL) {
                    harness_fail(WORKLOAD, "realloc of the block list returned NULL");
                }
            }
            short_lived[short_lived_count++] = allocate_words(&rng);
            short_lived_left--;
        } else {
            retained[retained_count++] = allocate_words(&rng);
            retained_left--;
        }
        self->allocations += 1;
        if (short_lived_count > 0 && harness_chance(&rng, 66)) {
            size_t victim = (size_t)harness_below(&rng, short_lived_count);
            free_words(short_lived[victim]);
            short_lived[victim] = NULL;
        }
        if (short_lived_count > 0 && harness_chance(&rng, 25)) {
            size_t mine = (size_t)harness_below(&rng, short_lived_count);
            size_t slot = (size_t)harness_below(&rng, TRANSFER_SLOTS);
            short_lived[mine] = atomic_exchange(&transfer[slot], short_lived[mine]);
        }
    }
    for (size_t i = 0; i < short_lived_count; i++) {
        free_words(short_lived[i]);
    }
    for (size_t i = 0; i < retained_count; i++) {
        free_words(retained[i]);
    }
    free(short_lived);
    free(retained);
    return NULL;
}

int main(int argc, char **argv) {
    int threads = (int)harness_argument(WORKLOAD, argc, argv, 1, 2);
    scale = (size_t)harness_argument(WORKLOAD, argc, argv, 2, 50);
    size_t iterations = (size_t)harness_argument(WORKLOAD, argc, argv, 3, 25);

    stress_thread *generation = harness_malloc(WORKLOAD, sizeof *generation * (size_t)threads);
    double allocations = 0;
    double started = harness_now();
    for (size_t iteration = 0; iteration < iterations; iteration++) {
        for (int t = 0; t < threads; t++) {
            generation[t].id = iteration * (uint64_t)threads + (uint64_t)t;
            generation[t].allocations = 0;
            harness_spawn(WORKLOAD, &generation[t].thread, stress, &generation[t]);
        }
        for (int t = 0; t < threads; t++) {
            pthread_join(generation[t].thread, NULL);
            allocations += generation[t].allocations;
        }
    }
    for (size_t slot = 0; slot < TRANSFER_SLOTS; slot++) {
        free_words(atomic_exchange(&transfer[slot], NULL));
    }
    double elapsed = harness_now() - started;
    free(generation);
    harness_report(WORKLOAD, threads, allocations, elapsed);
    return 0;
}
