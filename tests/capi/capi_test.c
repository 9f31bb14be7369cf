/*
 * Exercises the C interface of lle-mempool from plain C11: concurrent use
 * from several pthreads on both allocation paths, statistics, resizing,
 * refusal of bad input with the documented codes, and running out of memory
 * as an error, never an abort.
 *
 * Built and run by tests/capi.rs; prints "N passed, M failed" last and exits
 * non-zero if anything failed.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "lle/memory_management.h"

#define WORKER_THREADS 4
#define ROUNDS_PER_WORKER 200
#define BLOCKS_PER_ROUND 64
/* Sizes cycle through this table so both fast-path size classes and the
 * shared pool (sizes above 1 KiB) are exercised. */
static const size_t block_sizes[] = {1, 8, 16, 24, 48, 64, 100, 256, 512, 1000, 1024, 1500, 4096, 9000};
#define BLOCK_SIZE_COUNT (sizeof block_sizes / sizeof block_sizes[0])
/* The largest size a thread cache serves in a default pool (in a checked
 * one, a 1 KiB block's canary takes it past the largest size class). */
#define FAST_PATH_LIMIT 1024

static unsigned passed;
static unsigned failed;

static void check(int ok, const char *what, const char *file, int line) {
    if (ok) {
        passed++;
    } else {
        failed++;
        fprintf(stderr, "FAIL %s:%d: %s\n", file, line, what);
    }
}
#define CHECK(cond) check((cond) ? 1 : 0, #cond, __FILE__, __LINE__)

static unsigned char pattern_byte(unsigned worker, unsigned round, unsigned block, size_t offset) {
    return (unsigned char)(worker * 131u + round * 31u + block * 7u + (unsigned)offset);
}

static int is_aligned(const void *ptr, size_t alignment) {
    return ((uintptr_t)ptr % alignment) == 0;
}

/* The fast path promises what malloc does: 16, or the largest power of two
 * dividing the size if smaller, since no object of that size needs more. */
static size_t fast_path_alignment(size_t size) {
    size_t alignment = 1;
    while (alignment < 16 && size % (alignment * 2) == 0) {
        alignment *= 2;
    }
    return alignment;
}

struct worker {
    lle_memory_pool_t *pool;
    unsigned id;
    pthread_t thread;
    /* Tallies written only by the worker and read after join. */
    unsigned long shared_allocations;
    unsigned long fast_allocations;
    unsigned long small_fast_allocations;
    unsigned long allocation_failures;
    unsigned long misaligned_blocks;
    unsigned long corrupted_blocks;
    unsigned long free_failures;
};

/*
 * Each round allocates a batch, fills every block with a pattern, then
 * verifies and frees the whole batch. Holding a batch live at once (instead of
 * alloc/free pairs) makes blocks from different threads interleave in the
 * pool, so an overlap between live blocks would show up as a corrupted pattern.
 * Block i is allocated on path i % 2 and freed on path (i / 2) % 2, covering
 * all four combinations of shared and fast paths.
 */
static void *worker_main(void *arg) {
    struct worker *w = arg;
    void *blocks[BLOCKS_PER_ROUND];
    size_t sizes[BLOCKS_PER_ROUND];

    for (unsigned round = 0; round < ROUNDS_PER_WORKER; round++) {
        for (unsigned i = 0; i < BLOCKS_PER_ROUND; i++) {
            size_t size = block_sizes[(w->id + round + i) % BLOCK_SIZE_COUNT];
            int fast = i % 2;
            void *block = fast ? lle_pool_allocate_fast(w->pool, size) : lle_pool_allocate(w->pool, size);
            blocks[i] = block;
            sizes[i] = size;
            if (block == NULL) {
                w->allocation_failures++;
                continue;
            }
            if (fast) {
                w->fast_allocations++;
                if (size <= FAST_PATH_LIMIT) {
                    w->small_fast_allocations++;
                }
            } else {
                w->shared_allocations++;
            }
            if (!is_aligned(block, fast ? fast_path_alignment(size) : 16)) {
                w->misaligned_blocks++;
            }
            unsigned char *bytes = block;
            for (size_t off = 0; off < size; off++) {
                bytes[off] = pattern_byte(w->id, round, i, off);
            }
        }
        for (unsigned i = 0; i < BLOCKS_PER_ROUND; i++) {
            if (blocks[i] == NULL) {
                continue;
            }
            const unsigned char *bytes = blocks[i];
            for (size_t off = 0; off < sizes[i]; off++) {
                if (bytes[off] != pattern_byte(w->id, round, i, off)) {
                    w->corrupted_blocks++;
                    break;
                }
            }
            lle_result_t freed = (i / 2) % 2 ? lle_pool_free_fast(w->pool, blocks[i]) : lle_pool_free(w->pool, blocks[i]);
            if (freed != LLE_SUCCESS) {
                w->free_failures++;
            }
        }
    }
    return NULL;
}

static void test_concurrent_use(void) {
    lle_memory_pool_t *pool = lle_create_memory_pool(1u << 20, 0, LLE_POOL_EVENT);
    CHECK(pool != NULL);
    if (pool == NULL) {
        return;
    }

    struct worker workers[WORKER_THREADS];
    memset(workers, 0, sizeof workers);
    unsigned started = 0;
    for (unsigned t = 0; t < WORKER_THREADS; t++) {
        workers[t].pool = pool;
        workers[t].id = t;
        if (pthread_create(&workers[t].thread, NULL, worker_main, &workers[t]) != 0) {
            break;
        }
        started++;
    }
    CHECK(started == WORKER_THREADS);

    unsigned long shared = 0, fast = 0, small_fast = 0;
    for (unsigned t = 0; t < started; t++) {
        CHECK(pthread_join(workers[t].thread, NULL) == 0);
        CHECK(workers[t].allocation_failures == 0);
        CHECK(workers[t].misaligned_blocks == 0);
        CHECK(workers[t].corrupted_blocks == 0);
        CHECK(workers[t].free_failures == 0);
        shared += workers[t].shared_allocations;
        fast += workers[t].fast_allocations;
        small_fast += workers[t].small_fast_allocations;
    }
    CHECK(shared + fast == (unsigned long)started * ROUNDS_PER_WORKER * BLOCKS_PER_ROUND);

    lle_pool_statistics_t stats;
    memset(&stats, 0xAB, sizeof stats);
    CHECK(lle_get_pool_statistics(pool, &stats) == LLE_SUCCESS);
    /* The workers have exited, which hands their emptied cache slabs back,
     * so nothing at all is live now. */
    CHECK(stats.live_allocations == 0);
    CHECK(stats.used == 0);
    /* total_allocations counts shared-pool blocks (cache slabs and fast
     * requests above 1 KiB included), fast.allocations counts cache blocks:
     * each covers at least the calls made on its path. */
    CHECK(stats.total_allocations >= shared);
    CHECK(stats.fast.allocations >= small_fast);
    CHECK(stats.total_frees + stats.fast.frees >= shared + fast);
    CHECK(stats.failed_allocations == 0);
    CHECK(stats.size == lle_get_pool_size(pool));
    CHECK(stats.size >= (size_t)1u << 20);
    CHECK(stats.peak_used > 0);
    CHECK(stats.peak_used <= stats.size);

    double utilization = lle_calculate_pool_utilization(pool);
    CHECK(utilization >= 0.0 && utilization <= 100.0);

    lle_destroy_memory_pool(pool);
}

static void test_alignment(void) {
    lle_memory_pool_t *pool = lle_create_memory_pool(1u << 16, 64, LLE_POOL_BUFFER);
    CHECK(pool != NULL);
    if (pool == NULL) {
        return;
    }
    void *plain = lle_pool_allocate(pool, 10);
    CHECK(plain != NULL && is_aligned(plain, 64));
    void *aligned = lle_pool_allocate_aligned(pool, 10, 256);
    CHECK(aligned != NULL && is_aligned(aligned, 256));
    CHECK(lle_pool_free(pool, plain) == LLE_SUCCESS);
    CHECK(lle_pool_free(pool, aligned) == LLE_SUCCESS);
    lle_destroy_memory_pool(pool);

    /* Powers of two below the default are raised, not refused. */
    pool = lle_create_memory_pool(1u << 16, 8, LLE_POOL_BUFFER);
    CHECK(pool != NULL);
    if (pool != NULL) {
        void *block = lle_pool_allocate(pool, 10);
        CHECK(block != NULL && is_aligned(block, 16));
        CHECK(lle_pool_free(pool, block) == LLE_SUCCESS);
        lle_destroy_memory_pool(pool);
    }

    /* An alignment no allocation could have is refused at creation. */
    CHECK(lle_create_memory_pool(1u << 16, (size_t)1 << 31, LLE_POOL_BUFFER) == NULL);
}

static void test_resizing(void) {
    const size_t initial = 1u << 16;
    lle_memory_pool_t *pool = lle_create_memory_pool(initial, 0, LLE_POOL_HISTORY);
    CHECK(pool != NULL);
    if (pool == NULL) {
        return;
    }
    size_t before = lle_get_pool_size(pool);
    CHECK(before >= initial);
    CHECK(lle_expand_pool_memory(pool, initial) == LLE_SUCCESS);
    CHECK(lle_get_pool_size(pool) >= before + initial);

    CHECK(lle_atomic_pool_resize(pool, 4 * initial) == LLE_SUCCESS);
    CHECK(lle_get_pool_size(pool) >= 4 * initial);

    /* All or nothing: a shrink below live data is refused and changes nothing. */
    void *block = lle_pool_allocate(pool, initial);
    CHECK(block != NULL);
    size_t size_before_refused_shrink = lle_get_pool_size(pool);
    lle_result_t shrink = lle_atomic_pool_resize(pool, 16);
    CHECK(shrink == LLE_ERROR_SHRINK_BELOW_USED || shrink == LLE_ERROR_SHRINK_BLOCKED);
    CHECK(lle_get_pool_size(pool) == size_before_refused_shrink);
    CHECK(lle_pool_free(pool, block) == LLE_SUCCESS);

    /* Nothing is live in a pool grown to 4x its initial size, so compaction
     * has memory to give back. */
    size_t released = 0;
    size_t size_before_compaction = lle_get_pool_size(pool);
    CHECK(lle_compact_pool_memory(pool, &released) == LLE_SUCCESS);
    CHECK(released > 0);
    CHECK(lle_get_pool_size(pool) < size_before_compaction);
    CHECK(lle_compact_pool_memory(pool, NULL) == LLE_SUCCESS);

    lle_pool_statistics_t stats;
    CHECK(lle_get_pool_statistics(pool, &stats) == LLE_SUCCESS);
    CHECK(stats.expansions >= 1);
    CHECK(stats.compactions >= 1);
    CHECK(stats.live_allocations == 0);
    lle_destroy_memory_pool(pool);
}

static void test_bad_input(void) {
    lle_memory_pool_t *pool = lle_create_memory_pool(1u << 16, 0, LLE_POOL_TEMP);
    CHECK(pool != NULL);
    if (pool == NULL) {
        return;
    }

    /* Creation refuses what it cannot honour. */
    CHECK(lle_create_memory_pool(1u << 16, 3, LLE_POOL_TEMP) == NULL);
    CHECK(lle_create_memory_pool(1u << 16, 48, LLE_POOL_TEMP) == NULL);
    CHECK(lle_create_memory_pool(1u << 16, 0, (lle_memory_pool_type_t)99) == NULL);
    CHECK(lle_create_memory_pool_with_flags(1u << 16, 0, LLE_POOL_TEMP, 1u << 31) == NULL);
    CHECK(lle_create_memory_pool_with_flags(1u << 16, 0, LLE_POOL_TEMP, LLE_POOL_FLAG_CHECKED | (1u << 4)) == NULL);

    /* Size 0 and bad alignments give NULL on every allocation path. */
    CHECK(lle_pool_allocate(pool, 0) == NULL);
    CHECK(lle_pool_allocate_fast(pool, 0) == NULL);
    CHECK(lle_pool_allocate_aligned(pool, 0, 16) == NULL);
    CHECK(lle_pool_allocate_aligned(pool, 16, 3) == NULL);
    CHECK(lle_pool_allocate_aligned(pool, 16, 0) == NULL);
    CHECK(lle_pool_allocate(pool, SIZE_MAX) == NULL);

    /* A default pool checks no block, but refuses every pointer that is no
     * live block, but for a second free of a fast-path block (undefined
     * behaviour there, as with free(3); see test_double_free_in_checked_pool).
     * Everything is allocated before the first frees: a later allocation
     * could reuse a freed address and turn the double free below into a
     * valid free. */
    void *shared_block = lle_pool_allocate(pool, 32);
    CHECK(shared_block != NULL);
    void *shared_block_freed_fast = lle_pool_allocate(pool, 48);
    CHECK(shared_block_freed_fast != NULL);
    unsigned char *live_block = lle_pool_allocate(pool, 64);
    CHECK(live_block != NULL);
    unsigned char *live_fast_block = lle_pool_allocate_fast(pool, 64);
    CHECK(live_fast_block != NULL);
    void *from_malloc = malloc(64);
    CHECK(from_malloc != NULL);
    int on_stack = 0;
    CHECK(lle_pool_free(pool, shared_block) == LLE_SUCCESS);
    CHECK(lle_pool_free_fast(pool, shared_block_freed_fast) == LLE_SUCCESS);

    lle_pool_statistics_t before, after;
    CHECK(lle_get_pool_statistics(pool, &before) == LLE_SUCCESS);

    /* A shared block's double free, through both functions. */
    CHECK(lle_pool_free(pool, shared_block) == LLE_ERROR_DOUBLE_FREE);
    CHECK(lle_pool_free_fast(pool, shared_block) == LLE_ERROR_DOUBLE_FREE);
    CHECK(lle_pool_free(pool, shared_block_freed_fast) == LLE_ERROR_DOUBLE_FREE);
    CHECK(lle_pool_free_fast(pool, shared_block_freed_fast) == LLE_ERROR_DOUBLE_FREE);
    /* A pointer into the middle of a live block, of either path. */
    CHECK(lle_pool_free(pool, live_block + 16) == LLE_ERROR_INTERIOR_POINTER);
    CHECK(lle_pool_free_fast(pool, live_block + 16) == LLE_ERROR_INTERIOR_POINTER);
    CHECK(lle_pool_free(pool, live_fast_block + 8) == LLE_ERROR_INTERIOR_POINTER);
    CHECK(lle_pool_free_fast(pool, live_fast_block + 8) == LLE_ERROR_INTERIOR_POINTER);
    /* Pointers the pool never handed out. */
    CHECK(lle_pool_free(pool, from_malloc) == LLE_ERROR_FOREIGN_POINTER);
    CHECK(lle_pool_free_fast(pool, from_malloc) == LLE_ERROR_FOREIGN_POINTER);
    CHECK(lle_pool_free(pool, &on_stack) == LLE_ERROR_FOREIGN_POINTER);
    CHECK(lle_pool_free_fast(pool, &on_stack) == LLE_ERROR_FOREIGN_POINTER);

    /* A refused free changes nothing. */
    CHECK(lle_get_pool_statistics(pool, &after) == LLE_SUCCESS);
    CHECK(after.total_frees == before.total_frees);
    CHECK(after.fast.frees == before.fast.frees);
    CHECK(after.live_allocations == before.live_allocations);
    CHECK(after.used == before.used);
    memset(live_block, 0x5A, 64);
    memset(live_fast_block, 0xA5, 64);
    CHECK(live_block[0] == 0x5A && live_block[63] == 0x5A);
    CHECK(live_fast_block[0] == 0xA5 && live_fast_block[63] == 0xA5);
    CHECK(lle_pool_free(pool, live_block) == LLE_SUCCESS);
    CHECK(lle_pool_free_fast(pool, live_fast_block) == LLE_SUCCESS);
    free(from_malloc);

    /* NULL block is a no-op, as with free(3). */
    CHECK(lle_pool_free(pool, NULL) == LLE_SUCCESS);
    CHECK(lle_pool_free_fast(pool, NULL) == LLE_SUCCESS);

    /* NULL pool: codes, NULL, 0 or -1.0, never a crash. */
    CHECK(lle_pool_allocate(NULL, 16) == NULL);
    CHECK(lle_pool_allocate_aligned(NULL, 16, 16) == NULL);
    CHECK(lle_pool_allocate_fast(NULL, 16) == NULL);
    CHECK(lle_pool_free(NULL, &on_stack) == LLE_ERROR_NULL_POINTER);
    CHECK(lle_pool_free_fast(NULL, &on_stack) == LLE_ERROR_NULL_POINTER);
    CHECK(lle_pool_free(NULL, NULL) == LLE_ERROR_NULL_POINTER);
    CHECK(lle_expand_pool_memory(NULL, 4096) == LLE_ERROR_NULL_POINTER);
    size_t released = 0;
    CHECK(lle_compact_pool_memory(NULL, &released) == LLE_ERROR_NULL_POINTER);
    CHECK(lle_atomic_pool_resize(NULL, 4096) == LLE_ERROR_NULL_POINTER);
    CHECK(lle_get_pool_size(NULL) == 0);
    CHECK(lle_calculate_pool_utilization(NULL) < 0.0);
    lle_pool_statistics_t stats;
    CHECK(lle_get_pool_statistics(NULL, &stats) == LLE_ERROR_NULL_POINTER);
    lle_destroy_memory_pool(NULL);

    /* NULL output pointer. */
    CHECK(lle_get_pool_statistics(pool, NULL) == LLE_ERROR_NULL_POINTER);
    lle_destroy_memory_pool(pool);
}

/* In a checked pool a fast-path block's double free is refused too, through
 * both functions, and changes nothing. */
static void test_double_free_in_checked_pool(void) {
    lle_memory_pool_t *pool = lle_create_memory_pool_with_flags(1u << 16, 0, LLE_POOL_TEMP, LLE_POOL_FLAG_CHECKED);
    CHECK(pool != NULL);
    if (pool == NULL) {
        return;
    }
    unsigned char *freed_fast = lle_pool_allocate_fast(pool, 32);
    unsigned char *freed_shared_way = lle_pool_allocate_fast(pool, 32);
    unsigned char *live = lle_pool_allocate_fast(pool, 32);
    CHECK(freed_fast != NULL && freed_shared_way != NULL && live != NULL);
    if (freed_fast == NULL || freed_shared_way == NULL || live == NULL) {
        lle_destroy_memory_pool(pool);
        return;
    }
    memset(live, 0x3C, 32);
    CHECK(lle_pool_free_fast(pool, freed_fast) == LLE_SUCCESS);
    CHECK(lle_pool_free(pool, freed_shared_way) == LLE_SUCCESS);
    lle_pool_statistics_t before, after;
    CHECK(lle_get_pool_statistics(pool, &before) == LLE_SUCCESS);
    CHECK(lle_pool_free_fast(pool, freed_fast) == LLE_ERROR_DOUBLE_FREE);
    CHECK(lle_pool_free(pool, freed_fast) == LLE_ERROR_DOUBLE_FREE);
    CHECK(lle_pool_free_fast(pool, freed_shared_way) == LLE_ERROR_DOUBLE_FREE);
    CHECK(lle_pool_free(pool, freed_shared_way) == LLE_ERROR_DOUBLE_FREE);
    CHECK(lle_get_pool_statistics(pool, &after) == LLE_SUCCESS);
    CHECK(after.fast.frees == before.fast.frees);
    CHECK(after.live_allocations == before.live_allocations && after.live_allocations == 1);
    CHECK(live[0] == 0x3C && live[31] == 0x3C);
    CHECK(lle_pool_free_fast(pool, live) == LLE_SUCCESS);
    lle_destroy_memory_pool(pool);
}

static void test_guard_bytes(void) {
    /* In a checked pool, a write even one byte past the size asked is
     * refused when the block is freed, on both paths, and the block is
     * quarantined, so that freeing it again is a double free. */
    lle_memory_pool_t *pool = lle_create_memory_pool_with_flags(1u << 16, 0, LLE_POOL_TEMP, LLE_POOL_FLAG_CHECKED);
    CHECK(pool != NULL);
    if (pool == NULL) {
        return;
    }
    unsigned char *shared_block = lle_pool_allocate(pool, 100);
    unsigned char *fast_block = lle_pool_allocate_fast(pool, 40);
    unsigned char *in_bounds = lle_pool_allocate_fast(pool, 40);
    CHECK(shared_block != NULL && fast_block != NULL && in_bounds != NULL);
    if (shared_block == NULL || fast_block == NULL || in_bounds == NULL) {
        lle_destroy_memory_pool(pool);
        return;
    }
    memset(shared_block, 0x5A, 101);
    memset(fast_block, 0x5A, 41);
    memset(in_bounds, 0x5A, 40);
    CHECK(lle_pool_free(pool, shared_block) == LLE_ERROR_CORRUPTED);
    CHECK(lle_pool_free_fast(pool, fast_block) == LLE_ERROR_CORRUPTED);
    CHECK(lle_pool_free(pool, shared_block) == LLE_ERROR_DOUBLE_FREE);
    CHECK(lle_pool_free_fast(pool, fast_block) == LLE_ERROR_DOUBLE_FREE);
    CHECK(lle_pool_free_fast(pool, in_bounds) == LLE_SUCCESS);
    /* The damaged blocks' bytes were left as the overflow wrote them. */
    CHECK(shared_block[100] == 0x5A && fast_block[40] == 0x5A);
    lle_pool_statistics_t stats;
    CHECK(lle_get_pool_statistics(pool, &stats) == LLE_SUCCESS);
    CHECK(stats.live_allocations == 0);
    CHECK(stats.quarantined_blocks == 2);

    /* A write after free, with no corruption callback: the allocation that
     * finds it returns NULL (the library reports it on stderr), and the
     * next one a sound block. */
    unsigned char *freed = lle_pool_allocate_fast(pool, 200);
    CHECK(freed != NULL);
    if (freed != NULL) {
        CHECK(lle_pool_free_fast(pool, freed) == LLE_SUCCESS);
        freed[100] = 1;
        CHECK(lle_pool_allocate_fast(pool, 200) == NULL);
        unsigned char *next = lle_pool_allocate_fast(pool, 200);
        CHECK(next != NULL && next != freed);
        CHECK(lle_pool_free_fast(pool, next) == LLE_SUCCESS);
        CHECK(lle_get_pool_statistics(pool, &stats) == LLE_SUCCESS);
        CHECK(stats.quarantined_blocks == 3);
    }
    lle_destroy_memory_pool(pool);
}

/* A corruption callback is told of a write after free, with the block's
 * address, and the allocation that found it goes on with a sound block. */
struct damage_log {
    lle_memory_pool_t *pool;
    unsigned calls;
    lle_block_damage_t last;
    int allocated_inside;
};

static void note_damage(const lle_block_damage_t *damage, void *user_data) {
    struct damage_log *log = user_data;
    log->calls++;
    log->last = *damage;
    /* The callback may use the pool that called it. */
    void *scratch = lle_pool_allocate(log->pool, 16);
    log->allocated_inside = scratch != NULL;
    lle_pool_free(log->pool, scratch);
}

static void test_corruption_callback(void) {
    lle_memory_pool_t *pool = lle_create_memory_pool_with_flags(1u << 20, 0, LLE_POOL_EVENT, LLE_POOL_FLAG_CHECKED);
    CHECK(pool != NULL);
    if (pool == NULL) {
        return;
    }
    struct damage_log log = {.pool = pool};
    CHECK(lle_pool_set_corruption_callback(NULL, note_damage, &log) == LLE_ERROR_NULL_POINTER);
    CHECK(lle_pool_set_corruption_callback(pool, note_damage, &log) == LLE_SUCCESS);
    unsigned char *freed = lle_pool_allocate_fast(pool, 200);
    CHECK(freed != NULL);
    if (freed != NULL) {
        CHECK(lle_pool_free_fast(pool, freed) == LLE_SUCCESS);
        freed[120] = 7;
        unsigned char *next = lle_pool_allocate_fast(pool, 200);
        CHECK(next != NULL && next != freed);
        CHECK(log.calls == 1);
        CHECK(log.last.block == freed);
        CHECK(log.last.offset == 120);
        CHECK(log.last.size == 200);
        CHECK(log.last.usable >= 201);
        CHECK(log.last.kind == LLE_DAMAGE_WRITE_AFTER_FREE);
        CHECK(log.allocated_inside);
        if (next != NULL) {
            memset(next, 0x11, 200);
            CHECK(next[0] == 0x11 && next[199] == 0x11);
            CHECK(lle_pool_free_fast(pool, next) == LLE_SUCCESS);
        }
        lle_pool_statistics_t stats;
        CHECK(lle_get_pool_statistics(pool, &stats) == LLE_SUCCESS);
        CHECK(stats.quarantined_blocks == 1);
        CHECK(stats.live_allocations == 0);
    }

    /* Removed: a write after free makes the allocation return NULL again. */
    CHECK(lle_pool_set_corruption_callback(pool, NULL, NULL) == LLE_SUCCESS);
    unsigned char *again = lle_pool_allocate_fast(pool, 300);
    CHECK(again != NULL);
    if (again != NULL) {
        CHECK(lle_pool_free_fast(pool, again) == LLE_SUCCESS);
        again[100] = 1;
        CHECK(lle_pool_allocate_fast(pool, 300) == NULL);
        CHECK(log.calls == 1);
    }
    lle_destroy_memory_pool(pool);
}

/* The flags other than checked mode: zeroing on free, huge pages, and the
 * leak report when a pool is destroyed. */
static void test_flags(void) {
    lle_memory_pool_t *pool = lle_create_memory_pool_with_flags(1u << 20, 0, LLE_POOL_STRING, LLE_POOL_FLAG_ZERO_ON_FREE);
    CHECK(pool != NULL);
    if (pool != NULL) {
        volatile unsigned char *shared = lle_pool_allocate(pool, 100);
        volatile unsigned char *cached = lle_pool_allocate_fast(pool, 100);
        CHECK(shared != NULL && cached != NULL);
        if (shared != NULL && cached != NULL) {
            memset((void *)shared, 0x5A, 100);
            memset((void *)cached, 0x5A, 100);
            CHECK(lle_pool_free(pool, (void *)shared) == LLE_SUCCESS);
            CHECK(lle_pool_free_fast(pool, (void *)cached) == LLE_SUCCESS);
            /* The pool's memory stays mapped: the freed bytes read zero (a
             * cached block's first 8 hold its free-list link). */
            unsigned nonzero = 0;
            for (size_t i = 0; i < 100; i++) {
                nonzero += shared[i] != 0;
                nonzero += i >= 8 && cached[i] != 0;
            }
            CHECK(nonzero == 0);
        }
        lle_destroy_memory_pool(pool);
    }

    pool = lle_create_memory_pool_with_flags(4u << 20, 0, LLE_POOL_BUFFER, LLE_POOL_FLAG_HUGE_PAGES);
    CHECK(pool != NULL);
    if (pool != NULL) {
        /* The first block starts the pool's region, aligned for huge pages. */
        unsigned char *block = lle_pool_allocate(pool, 3u << 20);
        CHECK(block != NULL && is_aligned(block, 2u << 20));
        if (block != NULL) {
            memset(block, 1, 3u << 20);
            CHECK(block[(3u << 20) - 1] == 1);
            CHECK(lle_pool_free(pool, block) == LLE_SUCCESS);
        }
        lle_destroy_memory_pool(pool);
    }

    /* Standard error, sent to a file while the pool is destroyed. */
    pool = lle_create_memory_pool_with_flags(1u << 20, 0, LLE_POOL_CUSTOM, LLE_POOL_FLAG_REPORT_LEAKS_ON_DROP);
    FILE *captured = tmpfile();
    CHECK(pool != NULL && captured != NULL);
    if (pool != NULL && captured != NULL) {
        void *forgotten = lle_pool_allocate(pool, 100);
        CHECK(forgotten != NULL);
        /* It implies checked mode, so the pool knows its live blocks. */
        size_t live = 0;
        CHECK(lle_pool_report_leaks(pool, -1, &live) == LLE_SUCCESS);
        CHECK(live == 1);
        fflush(stderr);
        int saved = dup(STDERR_FILENO);
        CHECK(saved >= 0 && dup2(fileno(captured), STDERR_FILENO) >= 0);
        lle_destroy_memory_pool(pool);
        pool = NULL;
        CHECK(dup2(saved, STDERR_FILENO) >= 0);
        close(saved);
        char report[1024];
        rewind(captured);
        size_t length = fread(report, 1, sizeof report - 1, captured);
        report[length] = '\0';
        CHECK(strstr(report, "memory pool leak report: 1 live block, 100 bytes") != NULL);
    }
    lle_destroy_memory_pool(pool);
    if (captured != NULL) {
        fclose(captured);
    }
}

static void test_size_helpers(void) {
    CHECK(lle_align_memory_size(13, 16) == 16);
    CHECK(lle_align_memory_size(16, 16) == 16);
    CHECK(lle_align_memory_size(17, 64) == 64);
    CHECK(lle_align_memory_size(0, 16) == 0);
    CHECK(lle_align_memory_size(13, 0) == 0);
    CHECK(lle_align_memory_size(13, 3) == 0);
    CHECK(lle_align_memory_size(SIZE_MAX, 16) == 0);

    CHECK(lle_clamp_size(5, 10, 20) == 10);
    CHECK(lle_clamp_size(15, 10, 20) == 15);
    CHECK(lle_clamp_size(25, 10, 20) == 20);
    CHECK(lle_clamp_size(15, 20, 10) == 10);
}

/* The statistics count the blocks callers hold, not the slabs the caches
 * keep: with every block freed, live_allocations is 0 although this thread's
 * cache still holds its slab, and used is exactly the slabs' bytes. */
static void test_statistics_of_cached_slabs(void) {
    lle_memory_pool_t *pool = lle_create_memory_pool(1u << 20, 0, LLE_POOL_EVENT);
    CHECK(pool != NULL);
    if (pool == NULL) {
        return;
    }
    void *events[100];
    for (unsigned i = 0; i < 100; i++) {
        events[i] = lle_pool_allocate_fast(pool, 48);
        CHECK(events[i] != NULL);
    }
    void *shared = lle_pool_allocate(pool, 3000);
    CHECK(shared != NULL);
    lle_pool_statistics_t stats;
    CHECK(lle_get_pool_statistics(pool, &stats) == LLE_SUCCESS);
    CHECK(stats.live_allocations == 101);
    CHECK(stats.fast.slabs >= 1);
    CHECK(stats.fast.slab_bytes == stats.fast.slabs * 65536);
    /* 3000 bytes rounded up to 16-byte granules, plus the slabs. */
    CHECK(stats.used == 3008 + stats.fast.slab_bytes);

    for (unsigned i = 0; i < 100; i++) {
        CHECK(lle_pool_free_fast(pool, events[i]) == LLE_SUCCESS);
    }
    CHECK(lle_pool_free(pool, shared) == LLE_SUCCESS);
    CHECK(lle_get_pool_statistics(pool, &stats) == LLE_SUCCESS);
    CHECK(stats.live_allocations == 0);
    CHECK(stats.fast.slabs >= 1);
    CHECK(stats.fast.slab_bytes == stats.fast.slabs * 65536);
    CHECK(stats.used == stats.fast.slab_bytes);
    CHECK(stats.fast.allocations == stats.fast.frees);
    /* Nothing damaged, and no maximum size to refuse anything. */
    CHECK(stats.quarantined_blocks == 0);
    CHECK(stats.low_memory_retries == 0 && stats.low_memory_recoveries == 0);
    lle_destroy_memory_pool(pool);
}

/* Slabs emptied by lle_pool_free_fast go back to the shared pool: the
 * inline free hands an emptied slab to the pool before it returns. */
static void test_emptied_slabs_go_back(void) {
    enum { EVENTS = 8000, EVENT_SIZE = 64 };
    lle_memory_pool_t *pool = lle_create_memory_pool(4u << 20, 0, LLE_POOL_EVENT);
    CHECK(pool != NULL);
    if (pool == NULL) {
        return;
    }
    static unsigned char *events[EVENTS];
    for (unsigned i = 0; i < EVENTS; i++) {
        events[i] = lle_pool_allocate_fast(pool, EVENT_SIZE);
        CHECK(events[i] != NULL);
        if (events[i] != NULL) {
            memset(events[i], (int)(i & 0xFF), EVENT_SIZE);
        }
    }
    lle_pool_statistics_t full, emptied;
    CHECK(lle_get_pool_statistics(pool, &full) == LLE_SUCCESS);
    /* About a thousand 64-byte blocks fit in a 64 KiB slab. */
    CHECK(full.fast.slabs >= 7);
    unsigned intact = 0;
    for (unsigned i = 0; i < EVENTS; i++) {
        if (events[i] != NULL) {
            intact += events[i][0] == (unsigned char)(i & 0xFF) && events[i][EVENT_SIZE - 1] == (unsigned char)(i & 0xFF);
            CHECK(lle_pool_free_fast(pool, events[i]) == LLE_SUCCESS);
        }
    }
    CHECK(intact == EVENTS);
    CHECK(lle_get_pool_statistics(pool, &emptied) == LLE_SUCCESS);
    CHECK(emptied.fast.allocations == emptied.fast.frees);
    /* What stays: the class's current slab and one spare. */
    CHECK(emptied.fast.slabs <= 2);
    CHECK(emptied.used == emptied.fast.slab_bytes);
    lle_destroy_memory_pool(pool);
}

/* The process's mapped bytes now (VmSize), or 0 if unknown. */
static size_t mapped_bytes(void) {
    FILE *status = fopen("/proc/self/status", "r");
    if (status == NULL) {
        return 0;
    }
    char line[256];
    size_t kib = 0;
    while (fgets(line, sizeof line, status) != NULL) {
        if (strncmp(line, "VmSize:", 7) == 0) {
            kib = (size_t)strtoull(line + 7, NULL, 10);
            break;
        }
    }
    fclose(status);
    return kib * 1024;
}

/* Under an address-space limit with no room for the bookkeeping of 4 GiB
 * more (the pool reserved the address space of the memory itself when it
 * was created), growth fails with NULL or LLE_ERROR_OUT_OF_MEMORY, and the
 * pool is as it was. */
static void test_out_of_memory(void) {
    const size_t gib = (size_t)1 << 30;
    lle_memory_pool_t *pool = lle_create_memory_pool(1u << 20, 0, LLE_POOL_BUFFER);
    CHECK(pool != NULL);
    if (pool == NULL) {
        return;
    }
    unsigned char *block = lle_pool_allocate(pool, 1000);
    CHECK(block != NULL);
    if (block == NULL) {
        lle_destroy_memory_pool(pool);
        return;
    }
    memset(block, 0x5A, 1000);
    size_t size = lle_get_pool_size(pool);
    size_t mapped = mapped_bytes();
    CHECK(mapped > 0);

    struct rlimit unlimited;
    CHECK(getrlimit(RLIMIT_AS, &unlimited) == 0);
    struct rlimit limited = unlimited;
    limited.rlim_cur = (rlim_t)(mapped + ((size_t)8 << 20));
    CHECK(setrlimit(RLIMIT_AS, &limited) == 0);
    CHECK(lle_pool_allocate(pool, 4 * gib) == NULL);
    CHECK(lle_expand_pool_memory(pool, 4 * gib) == LLE_ERROR_OUT_OF_MEMORY);
    CHECK(lle_get_pool_size(pool) == size);
    void *small = lle_pool_allocate(pool, 100);
    CHECK(small != NULL);
    CHECK(setrlimit(RLIMIT_AS, &unlimited) == 0);

    size_t intact = 0;
    while (intact < 1000 && block[intact] == 0x5A) {
        intact++;
    }
    CHECK(intact == 1000);
    CHECK(lle_pool_free(pool, block) == LLE_SUCCESS);
    if (small != NULL) {
        CHECK(lle_pool_free(pool, small) == LLE_SUCCESS);
    }
    lle_destroy_memory_pool(pool);
}

/* A producer that gets ahead of its consumer: the callback, told that the
 * soft limit was crossed, catches the consumer up by freeing the queued
 * blocks, checking their contents first. */
#define PRESSURE_QUEUE 64
/* Bytes asked per block: rounded up to 16-byte granules, a block takes 512
 * bytes of the pool. */
#define PRESSURE_BLOCK 500
struct pressure_queue {
    lle_memory_pool_t *pool;
    unsigned char *blocks[PRESSURE_QUEUE];
    size_t count;
    unsigned calls;
    unsigned corrupted;
    lle_memory_pressure_event_t last;
};

static void catch_up(const lle_memory_pressure_event_t *event, void *user_data) {
    struct pressure_queue *queue = user_data;
    queue->calls++;
    queue->last = *event;
    /* The callback may allocate from the pool that called it. */
    void *scratch = lle_pool_allocate(queue->pool, 32);
    if (scratch != NULL) {
        lle_pool_free(queue->pool, scratch);
    }
    for (size_t i = 0; i < queue->count; i++) {
        for (size_t byte = 0; byte < PRESSURE_BLOCK; byte++) {
            if (queue->blocks[i][byte] != (unsigned char)i) {
                queue->corrupted++;
                break;
            }
        }
        lle_pool_free(queue->pool, queue->blocks[i]);
    }
    queue->count = 0;
}

static void test_memory_pressure(void) {
    lle_memory_pool_t *pool = lle_create_memory_pool(1u << 20, 0, LLE_POOL_EVENT);
    CHECK(pool != NULL);
    if (pool == NULL) {
        return;
    }
    struct pressure_queue queue = {.pool = pool};
    CHECK(lle_pool_set_memory_pressure_callback(NULL, catch_up, &queue) == LLE_ERROR_NULL_POINTER);
    CHECK(lle_pool_set_soft_limit(NULL, 0) == LLE_ERROR_NULL_POINTER);
    CHECK(lle_pool_set_memory_pressure_callback(pool, catch_up, &queue) == LLE_SUCCESS);
    CHECK(lle_pool_set_soft_limit(pool, 16 * 1024) == LLE_SUCCESS);
    for (unsigned round = 0; round < 1000; round++) {
        unsigned char *block = lle_pool_allocate(pool, PRESSURE_BLOCK);
        CHECK(block != NULL);
        if (block == NULL) {
            break;
        }
        if (queue.count == PRESSURE_QUEUE) {
            CHECK(!"the callback never caught the consumer up");
            break;
        }
        memset(block, (int)queue.count, PRESSURE_BLOCK);
        queue.blocks[queue.count++] = block;
    }
    /* 16 KiB hold 32 blocks of 512 bytes: the 33rd crosses the limit, and
     * the callback frees the 32 before it; from then on, the block left
     * over and 32 more cross it again. */
    CHECK(queue.calls == 1 + (1000 - 33) / 32);
    CHECK(queue.corrupted == 0);
    CHECK(queue.last.reason == LLE_PRESSURE_SOFT_LIMIT);
    CHECK(queue.last.soft_limit == 16 * 1024);
    CHECK(queue.last.max_size == LLE_NO_LIMIT);
    CHECK(queue.last.requested == 0);
    CHECK(queue.last.used > 16 * 1024);

    for (size_t i = 0; i < queue.count; i++) {
        CHECK(lle_pool_free(pool, queue.blocks[i]) == LLE_SUCCESS);
    }
    queue.count = 0;

    /* Removed: not called again, though the pool crosses a limit of 0. */
    unsigned calls = queue.calls;
    CHECK(lle_pool_set_memory_pressure_callback(pool, NULL, NULL) == LLE_SUCCESS);
    CHECK(lle_pool_set_soft_limit(pool, LLE_NO_LIMIT) == LLE_SUCCESS);
    CHECK(lle_pool_set_soft_limit(pool, 0) == LLE_SUCCESS);
    void *more = lle_pool_allocate(pool, 64 * 1024);
    CHECK(more != NULL);
    CHECK(queue.calls == calls);
    CHECK(lle_pool_free(pool, more) == LLE_SUCCESS);
    lle_pool_statistics_t stats;
    CHECK(lle_get_pool_statistics(pool, &stats) == LLE_SUCCESS);
    CHECK(stats.live_allocations == 0);
    lle_destroy_memory_pool(pool);
}

static void test_leak_report(void) {
    /* Only a checked pool knows its live blocks. */
    lle_memory_pool_t *unchecked = lle_create_memory_pool(1u << 20, 0, LLE_POOL_CUSTOM);
    size_t unknown = 7;
    CHECK(unchecked != NULL);
    CHECK(lle_pool_report_leaks(unchecked, -1, &unknown) == LLE_ERROR_INVALID_CONFIG);
    CHECK(unknown == 7);
    lle_destroy_memory_pool(unchecked);

    /* Two blocks leaked, one per path, and one freed: the report names the
     * two, written to a file, and counts them. */
    lle_memory_pool_t *pool = lle_create_memory_pool_with_flags(1u << 20, 0, LLE_POOL_CUSTOM, LLE_POOL_FLAG_CHECKED);
    FILE *file = tmpfile();
    CHECK(pool != NULL && file != NULL);
    if (pool == NULL || file == NULL) {
        lle_destroy_memory_pool(pool);
        if (file != NULL) {
            fclose(file);
        }
        return;
    }
    void *cached = lle_pool_allocate_fast(pool, 24);
    void *shared = lle_pool_allocate(pool, 5000);
    void *freed = lle_pool_allocate(pool, 100);
    CHECK(cached != NULL && shared != NULL && freed != NULL);
    CHECK(lle_pool_free(pool, freed) == LLE_SUCCESS);
    size_t live = 0;
    CHECK(lle_pool_report_leaks(pool, fileno(file), &live) == LLE_SUCCESS);
    CHECK(live == 2);
    char report[4096];
    rewind(file);
    size_t length = fread(report, 1, sizeof report - 1, file);
    report[length] = '\0';
    CHECK(strncmp(report, "memory pool leak report: 2 live blocks, 5024 bytes asked", 56) == 0);
    CHECK(strstr(report, ": 5000 bytes (5008 usable, shared)") != NULL);
    CHECK(strstr(report, ": 24 bytes (32 usable, cache)") != NULL);
    CHECK(strstr(report, "  cache 32 bytes: 1 block\n") != NULL);
    /* Bad input. */
    CHECK(lle_pool_report_leaks(NULL, fileno(file), &live) == LLE_ERROR_NULL_POINTER);
    CHECK(lle_pool_report_leaks(pool, -1, NULL) == LLE_SUCCESS);
    CHECK(lle_pool_free_fast(pool, cached) == LLE_SUCCESS);
    CHECK(lle_pool_free(pool, shared) == LLE_SUCCESS);
    CHECK(lle_pool_report_leaks(pool, -1, &live) == LLE_SUCCESS);
    CHECK(live == 0);
    fclose(file);
    lle_destroy_memory_pool(pool);
}

int main(void) {
    test_concurrent_use();
    test_statistics_of_cached_slabs();
    test_emptied_slabs_go_back();
    test_alignment();
    test_resizing();
    test_bad_input();
    test_double_free_in_checked_pool();
    test_guard_bytes();
    test_corruption_callback();
    test_flags();
    test_size_helpers();
    test_out_of_memory();
    test_memory_pressure();
    test_leak_report();
    printf("%u passed, %u failed\n", passed, failed);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
