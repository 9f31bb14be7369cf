/*
 * lle/memory_management.h - C interface to lle-mempool, a lock-free
 * concurrent memory pool.
 *
 * Build the Rust crate with `--features capi` and link against
 * liblle_mempool.a (plus -lpthread -ldl -lm) or liblle_mempool.so.
 *
 * Conventions, for every function below:
 *   - A pool handle may be used from any number of threads at once, except
 *     by lle_destroy_memory_pool, which must be the handle's last use.
 *   - A NULL pool or NULL output pointer never crashes: functions returning
 *     lle_result_t report LLE_ERROR_NULL_POINTER; the others return NULL,
 *     0 or -1.0 as documented on each.
 *   - Allocation functions return NULL on any failure (size 0, a bad
 *     alignment, out of memory, ...); they never abort.
 *   - An internal failure of the library is reported as LLE_ERROR_INTERNAL
 *     (or NULL) rather than terminating the process.
 *
 * This header is hand-written; the crate's test suite checks every constant,
 * size and field offset below against the Rust definitions.
 */
#ifndef LLE_MEMORY_MANAGEMENT_H
#define LLE_MEMORY_MANAGEMENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* An opaque pool handle; create with lle_create_memory_pool. */
typedef struct lle_memory_pool lle_memory_pool_t;

/* What a pool is used for: a label reported in statistics and logs. */
typedef enum lle_memory_pool_type {
    LLE_POOL_BUFFER = 0,
    LLE_POOL_EVENT = 1,
    LLE_POOL_STRING = 2,
    LLE_POOL_TEMP = 3,
    LLE_POOL_HISTORY = 4,
    LLE_POOL_SYNTAX = 5,
    LLE_POOL_COMPLETION = 6,
    LLE_POOL_CUSTOM = 7,
    /* Not a pool type: forces a 32-bit enum even under -fshort-enums, so
     * the ABI matches the Rust side. */
    LLE_POOL_TYPE_MAX_ENUM = 0x7FFFFFFF
} lle_memory_pool_type_t;

/* Result codes: LLE_SUCCESS is 0, every failure is negative. The values are
 * part of the ABI and will not change. */
typedef enum lle_result {
    LLE_SUCCESS = 0,
    /* The pool handle or a required output pointer was NULL. */
    LLE_ERROR_NULL_POINTER = -1,
    /* An argument was out of range before reaching the pool. */
    LLE_ERROR_INVALID_PARAMETER = -2,
    /* A size of 0 was requested. */
    LLE_ERROR_ZERO_SIZE = -3,
    /* A size so large that rounding it overflows. */
    LLE_ERROR_SIZE_OVERFLOW = -4,
    /* An alignment that is not a power of two. */
    LLE_ERROR_INVALID_ALIGNMENT = -5,
    /* An alignment larger than the pool supports. */
    LLE_ERROR_ALIGNMENT_TOO_LARGE = -6,
    /* The pointer does not lie inside this pool (malloc'd, stack, other pool). */
    LLE_ERROR_FOREIGN_POINTER = -7,
    /* The pointer lies inside the pool but not at the start of a block. */
    LLE_ERROR_INTERIOR_POINTER = -8,
    /* No live block starts there: it was already freed, or never handed out
     * (the pool cannot tell which). */
    LLE_ERROR_DOUBLE_FREE = -9,
    /* Growing would pass the pool's maximum size. */
    LLE_ERROR_EXCEEDS_MAX_SIZE = -10,
    /* A resize below the bytes currently in use. */
    LLE_ERROR_SHRINK_BELOW_USED = -11,
    /* A resize that live blocks near the end of the pool prevent. */
    LLE_ERROR_SHRINK_BLOCKED = -12,
    /* The operating system refused memory. */
    LLE_ERROR_OUT_OF_MEMORY = -13,
    /* The pool could not be configured as asked. */
    LLE_ERROR_INVALID_CONFIG = -14,
    /* The pool's internal structures failed a consistency check, or a freed
     * block was written past the size asked (the block is quarantined). */
    LLE_ERROR_CORRUPTED = -15,
    /* The library hit an internal error (a bug); the call had no reliable effect. */
    LLE_ERROR_INTERNAL = -16,
    /* The calling thread was already inside an operation of this pool (a
     * signal handler or an allocator calling back into it); refused. */
    LLE_ERROR_REENTERED = -17,
    /* Not a result: forces a 32-bit enum even under -fshort-enums. */
    LLE_RESULT_MAX_ENUM = 0x7FFFFFFF
} lle_result_t;

/* The per-thread caches behind lle_pool_allocate_fast, summed over threads. */
typedef struct lle_fast_path_statistics {
    /* Blocks handed out from the caches, ever. */
    uint64_t allocations;
    /* Cache blocks given back, on any thread, ever. */
    uint64_t frees;
    /* Of those, the ones freed by a thread other than the block's owner. */
    uint64_t remote_frees;
    /* Free blocks sitting in slabs, ready for the caches. */
    size_t cached_blocks;
    /* Slabs held by the caches (or left behind by exited threads): live
     * blocks of the shared pool, which are not allocations. */
    size_t slabs;
    /* Bytes of the shared pool in those slabs (64 KiB each); part of used. */
    size_t slab_bytes;
} lle_fast_path_statistics_t;

/* A snapshot of a pool's state and history; see lle_get_pool_statistics.
 * size == used + free. used is the bytes of the shared blocks callers hold
 * (rounded up to 16 bytes) plus fast.slab_bytes, the caches' slabs.
 * live_allocations counts the blocks handed to callers and not yet freed, on
 * both paths (shared blocks plus fast.allocations - fast.frees); slabs are
 * not allocations, so it is 0 once everything is freed, whatever the caches
 * hold. The shared-pool figures are one consistent snapshot; the cache
 * counters are summed over threads and exact while the threads are idle. */
typedef struct lle_pool_statistics {
    /* Bytes mapped, in all regions. */
    size_t size;
    /* Bytes in live blocks of the shared pool: the shared blocks callers
     * hold plus fast.slab_bytes. */
    size_t used;
    /* Bytes in free blocks: size - used. */
    size_t free;
    /* The largest free block, in bytes. */
    size_t largest_free_block;
    /* Free blocks: maximal runs of free memory. */
    size_t free_blocks;
    /* Blocks handed to callers and not yet freed, on both paths; 0 once
     * everything is freed. */
    size_t live_allocations;
    /* The most bytes ever in use at once. */
    size_t peak_used;
    /* Allocations from the shared pool, ever, cache slabs included. */
    uint64_t total_allocations;
    /* Frees to the shared pool, ever, cache slabs included. */
    uint64_t total_frees;
    /* Allocations refused, on either path. */
    uint64_t failed_allocations;
    /* Times the pool grew. */
    uint64_t expansions;
    /* Times compaction or a resize gave memory back. */
    uint64_t compactions;
    /* Mean time of a sampled allocation, either path, in nanoseconds. */
    uint64_t avg_alloc_time_ns;
    /* Mean time of a sampled free, either path, in nanoseconds. */
    uint64_t avg_free_time_ns;
    /* The per-thread caches. */
    lle_fast_path_statistics_t fast;
    /* Blocks a checked pool found damaged and holds back for good. */
    size_t quarantined_blocks;
    /* Allocations the maximum size refused and the pool retried after
     * compacting and calling the memory-pressure callback. */
    uint64_t low_memory_retries;
    /* Of those, the retries that succeeded. */
    uint64_t low_memory_recoveries;
} lle_pool_statistics_t;

/* Flags for lle_create_memory_pool_with_flags; 0 is the default pool. */
/* Checked mode, a debugging aid that costs every allocation and free a pass
 * over the block: double frees are refused on both paths
 * (LLE_ERROR_DOUBLE_FREE); the free of a block written past the size asked
 * is refused with LLE_ERROR_CORRUPTED, and the block quarantined (never
 * handed out again); freed blocks are poisoned, and an allocation that finds
 * a freed block written reports it to the corruption callback (see
 * lle_pool_set_corruption_callback), quarantines the block and goes on with
 * another, or, with no callback, returns NULL once. */
#define LLE_POOL_FLAG_CHECKED (1u << 0)
/* Every block is zeroed as it is freed, on both paths (a fast-path block but
 * its first 8 bytes, which hold a free-list link). */
#define LLE_POOL_FLAG_ZERO_ON_FREE (1u << 1)
/* Transparent huge pages (madvise(MADV_HUGEPAGE)) on regions of 2 MiB or
 * more, aligned to 2 MiB. */
#define LLE_POOL_FLAG_HUGE_PAGES (1u << 2)
/* lle_destroy_memory_pool writes a leak report (see lle_pool_report_leaks)
 * to standard error if blocks are live. Implies LLE_POOL_FLAG_CHECKED. */
#define LLE_POOL_FLAG_REPORT_LEAKS_ON_DROP (1u << 3)

/*
 * Creates a pool of initial_size bytes (the pool may round it up, and grows
 * on demand), set up by `flags`, a combination of LLE_POOL_FLAG_* bits (0
 * for the default pool). Blocks from lle_pool_allocate are aligned to
 * `alignment`: 0 means the default (16), and powers of two below 16 are
 * raised to 16. Returns NULL if alignment is not a power of two or above
 * 1 GiB, type is not an LLE_POOL_* value, flags has a bit that is no
 * LLE_POOL_FLAG_*, or the pool cannot be created.
 * Release with lle_destroy_memory_pool.
 */
lle_memory_pool_t *lle_create_memory_pool_with_flags(size_t initial_size, size_t alignment,
                                                     lle_memory_pool_type_t type, uint32_t flags);

/*
 * lle_create_memory_pool_with_flags with no flags: the default pool. It
 * checks no block: like free(3), freeing a fast-path block twice is
 * undefined behaviour (see LLE_POOL_FLAG_CHECKED); every other bad pointer
 * is refused.
 */
lle_memory_pool_t *lle_create_memory_pool(size_t initial_size, size_t alignment,
                                          lle_memory_pool_type_t type);

/*
 * Destroys a pool and returns its memory to the OS; every block it handed
 * out becomes invalid. No other thread may be using the pool. NULL is
 * ignored.
 */
void lle_destroy_memory_pool(lle_memory_pool_t *pool);

/* Allocates `size` bytes aligned to the pool's alignment; NULL on failure
 * (including size 0 and a NULL pool). */
void *lle_pool_allocate(lle_memory_pool_t *pool, size_t size);

/* Allocates `size` bytes aligned to `alignment`, a power of two; NULL on
 * failure (including size 0, alignment 0 or not a power of two). */
void *lle_pool_allocate_aligned(lle_memory_pool_t *pool, size_t size, size_t alignment);

/* Allocates through the calling thread's cache: fastest for sizes up to
 * 1 KiB (larger sizes use the shared pool). The block is aligned to 16, or to
 * the largest power of two dividing `size` if smaller: enough for any object
 * of that size, as with malloc. NULL on failure. */
void *lle_pool_allocate_fast(lle_memory_pool_t *pool, size_t size);

/*
 * Returns a block to the pool. Accepts blocks from any allocate function,
 * from any thread. Like free(3), a NULL ptr does nothing and returns
 * LLE_SUCCESS. A pointer the pool cannot free is refused and nothing is
 * freed: LLE_ERROR_FOREIGN_POINTER (not from this pool),
 * LLE_ERROR_INTERIOR_POINTER (not the start of a block),
 * LLE_ERROR_DOUBLE_FREE (already freed, or never handed out: always for
 * lle_pool_allocate's blocks, for lle_pool_allocate_fast's only in checked
 * pools, where a second free is otherwise undefined behaviour),
 * LLE_ERROR_CORRUPTED (checked pools: written past the size asked, and
 * quarantined).
 */
lle_result_t lle_pool_free(lle_memory_pool_t *pool, void *ptr);

/* Same as lle_pool_free: both return a block to wherever it came from (a
 * thread cache or the shared pool), whichever function allocated it and
 * whichever thread frees it. */
lle_result_t lle_pool_free_fast(lle_memory_pool_t *pool, void *ptr);

/* Grows the pool by additional_size bytes (the pool may round it up). */
lle_result_t lle_expand_pool_memory(lle_memory_pool_t *pool, size_t additional_size);

/* Gives unused memory back to the OS. If `released` is not NULL it receives
 * the number of bytes given back (0 on failure); NULL is allowed. */
lle_result_t lle_compact_pool_memory(lle_memory_pool_t *pool, size_t *released);

/* Sets the pool's size to new_size bytes, all or nothing: on failure the pool
 * is unchanged (LLE_ERROR_SHRINK_BELOW_USED, LLE_ERROR_SHRINK_BLOCKED,
 * LLE_ERROR_EXCEEDS_MAX_SIZE, ...). */
lle_result_t lle_atomic_pool_resize(lle_memory_pool_t *pool, size_t new_size);

/* Bytes the pool manages; 0 for a NULL pool (a compacted pool with nothing
 * live may also be empty). */
size_t lle_get_pool_size(const lle_memory_pool_t *pool);

/* Percentage of the pool handed out, 0.0 to 100.0; -1.0 for a NULL pool. */
double lle_calculate_pool_utilization(const lle_memory_pool_t *pool);

/* Fills *out with a snapshot of the pool's statistics. LLE_ERROR_NULL_POINTER
 * if pool or out is NULL; *out is untouched on failure. */
lle_result_t lle_get_pool_statistics(const lle_memory_pool_t *pool, lle_pool_statistics_t *out);

/* No soft limit, or no maximum size: in lle_memory_pressure_event_t and for
 * lle_pool_set_soft_limit. */
#define LLE_NO_LIMIT SIZE_MAX

/* Why a memory-pressure callback is called. */
#define LLE_PRESSURE_SOFT_LIMIT 0u /* an allocation crossed the soft limit */
#define LLE_PRESSURE_MAX_SIZE 1u   /* the maximum size refused an allocation */

/* What a memory-pressure callback is told. */
typedef struct lle_memory_pressure_event {
    size_t used;       /* bytes in use when the callback is called */
    size_t soft_limit; /* the soft limit, or LLE_NO_LIMIT */
    size_t max_size;   /* the maximum size, or LLE_NO_LIMIT */
    size_t requested;  /* LLE_PRESSURE_MAX_SIZE: bytes asked for; else 0 */
    unsigned int reason; /* LLE_PRESSURE_SOFT_LIMIT or LLE_PRESSURE_MAX_SIZE */
} lle_memory_pressure_event_t;

typedef void (*lle_memory_pressure_fn)(const lle_memory_pressure_event_t *event, void *user_data);

/* Sets the pool's memory-pressure callback, replacing the one set before;
 * callback NULL removes it. It is called with user_data when an allocation
 * takes the bytes in use above the soft limit (once per crossing: again
 * only after frees bring them back to the limit or below), and when the
 * pool's maximum size refuses an allocation: the pool has then compacted,
 * and once the callback returns it tries the allocation once more, so a
 * callback that frees memory lets it succeed. It runs on the allocating
 * thread (any thread that uses the pool: user_data must allow that),
 * outside the pool's lock: it may free and allocate from the pool, but must
 * not set the callback. Once this returns, the previous callback is not
 * running and will not be called again. */
lle_result_t lle_pool_set_memory_pressure_callback(lle_memory_pool_t *pool, lle_memory_pressure_fn callback,
                                                   void *user_data);

/* Sets the soft limit in bytes; LLE_NO_LIMIT removes it. It limits nothing:
 * crossing it only calls the memory-pressure callback.
 * LLE_ERROR_INVALID_CONFIG for a limit above the pool's maximum size. */
lle_result_t lle_pool_set_soft_limit(lle_memory_pool_t *pool, size_t soft_limit);

/* Writes a summary of the pool's live blocks to the file descriptor fd,
 * unless fd is negative: how many, their bytes, the ten largest and how many
 * of each size. Stores how many there are in *live_blocks if it is not NULL.
 * Only checked pools know their live blocks (LLE_POOL_FLAG_CHECKED):
 * LLE_ERROR_INVALID_CONFIG for any other.
 * LLE_ERROR_NULL_POINTER if pool is NULL; LLE_ERROR_INVALID_PARAMETER if
 * the report could not be written (*live_blocks is set);
 * LLE_ERROR_OUT_OF_MEMORY if the list's memory could not be had. */
lle_result_t lle_pool_report_leaks(const lle_memory_pool_t *pool, int fd, size_t *live_blocks);

/* How a checked pool found a block damaged. */
#define LLE_DAMAGE_OVERFLOW 0u         /* written past the size asked */
#define LLE_DAMAGE_WRITE_AFTER_FREE 1u /* written while it was free */

/* What a corruption callback is told. */
typedef struct lle_block_damage {
    void *block;       /* the damaged block */
    size_t size;       /* bytes asked for it (for a write after free, by the
                        * allocation that was about to receive it) */
    size_t usable;     /* bytes the block spans, guard bytes included */
    size_t offset;     /* the first damaged byte, from block */
    unsigned int kind; /* LLE_DAMAGE_OVERFLOW or LLE_DAMAGE_WRITE_AFTER_FREE */
} lle_block_damage_t;

typedef void (*lle_corruption_fn)(const lle_block_damage_t *damage, void *user_data);

/* Sets where a checked pool reports a write after free, replacing the
 * callback set before; callback NULL removes it. The allocation that finds
 * a freed block written calls it with user_data, quarantines the block and
 * goes on with another; with no callback it returns NULL instead (and the
 * library writes the damage to standard error). It runs on the allocating
 * thread (any thread that uses the pool: user_data must allow that),
 * outside the pool's locks: it may allocate and free, but must not set the
 * callback. Once this returns, the previous callback is not running and
 * will not be called again. An unchecked pool never calls it. */
lle_result_t lle_pool_set_corruption_callback(lle_memory_pool_t *pool, lle_corruption_fn callback,
                                              void *user_data);

/* Rounds size up to a multiple of alignment (a power of two). Returns 0 if
 * alignment is not a power of two (0 included) or the result would not fit
 * in size_t; size 0 also gives 0. */
size_t lle_align_memory_size(size_t size, size_t alignment);

/* Limits size to [min_size, max_size]. If min_size > max_size, max_size wins:
 * the result is MIN(MAX(size, min_size), max_size). */
size_t lle_clamp_size(size_t size, size_t min_size, size_t max_size);

#ifdef __cplusplus
}
#endif

#endif /* LLE_MEMORY_MANAGEMENT_H */
