/*
 * pair: the cost of one 64-byte allocation and its free on the calling
 * thread's fast path, the LLE line editor's event pattern.
 *
 * `pairs` times: allocate 64 bytes, write one byte into the block, read it
 * back, free the block. The byte is written and read through a volatile
 * pointer, so the compiler can neither drop the pair nor skip the write.
 * The first WARM_UP_PAIRS pairs are not timed (thread cache set-up, first
 * page faults). The `pairs` pairs run REPETITIONS times; prints the mean
 * wall time per pair of the fastest repetition, in nanoseconds.
 *
 * Built two ways by run.sh:
 * - with -DPAIR_POOL, over lle_pool_allocate_fast / lle_pool_free_fast on a
 *   pool from lle_create_memory_pool, linked against liblle_mempool.a or
 *   liblle_mempool.so;
 * - without it, over malloc / free, for each allocator preloaded.
 *
 * Usage: pair [pairs]   (default 20000000)
 */
#include "harness.h"

#ifdef PAIR_POOL
#include "lle/memory_management.h"
static const char *const WORKLOAD = "pair-pool";
#else
static const char *const WORKLOAD = "pair-malloc";
#endif

enum { BLOCK_SIZE = 64, WARM_UP_PAIRS = 100000, REPETITIONS = 5 };

#ifdef PAIR_POOL
static lle_memory_pool_t *pool;

static void *allocate_block(void) {
    return lle_pool_allocate_fast(pool, BLOCK_SIZE);
}

static void free_block(void *block) {
    lle_result_t result = lle_pool_free_fast(pool, block);
    if (result != LLE_SUCCESS) {
        harness_fail(WORKLOAD, "lle_pool_free_fast returned %d", (int)result);
    }
}
#else
static void *allocate_block(void) {
    return malloc(BLOCK_SIZE);
}

static void free_block(void *block) {
    free(block);
}
#endif

static void run_pairs(size_t pairs) {
    for (size_t i = 0; i < pairs; i++) {
        volatile unsigned char *block = allocate_block();
        if (block == NULL) {
            harness_fail(WORKLOAD, "allocation %zu of %d bytes returned NULL", i, BLOCK_SIZE);
        }
        unsigned char value = (unsigned char)i;
        block[0] = value;
        if (block[0] != value) {
            harness_fail(WORKLOAD, "block %p lost the byte written into it", (void *)block);
        }
        free_block((void *)block);
    }
}

int main(int argc, char **argv) {
    size_t pairs = (size_t)harness_argument(WORKLOAD, argc, argv, 1, 20000000);
#ifdef PAIR_POOL
    pool = lle_create_memory_pool(1 << 20, 0, LLE_POOL_EVENT);
    if (pool == NULL) {
        harness_fail(WORKLOAD, "lle_create_memory_pool returned NULL");
    }
#endif
    run_pairs(WARM_UP_PAIRS);
    /* The fastest of REPETITIONS runs: on a shared machine other work only
     * ever slows a run down, so the fastest is the nearest to the code's own
     * cost. */
    double elapsed = 0.0;
    for (int repetition = 0; repetition < REPETITIONS; repetition++) {
        double started = harness_now();
        run_pairs(pairs);
        double taken = harness_now() - started;
        if (repetition == 0 || taken < elapsed) {
            elapsed = taken;
        }
    }
#ifdef PAIR_POOL
    lle_destroy_memory_pool(pool);
#endif
    printf("workload=%s threads=1 pairs=%zu seconds=%.4f ns_per_pair=%.2f check=ok\n", WORKLOAD, pairs, elapsed,
           elapsed * 1e9 / (double)pairs);
    return 0;
}
