/*
 * What every allocator workload in benches/c shares: a monotonic clock, a
 * small per-thread random generator, the pattern each workload writes into
 * its blocks and checks before freeing them, thread start-up that cannot
 * fail silently, and the one machine-readable result line.
 *
 * The workloads call plain malloc/free; run.sh picks the allocator with
 * LD_PRELOAD. A failed check prints what went wrong and exits with status 1,
 * so a run whose blocks were corrupted never reports a throughput.
 */
#ifndef LLE_BENCH_HARNESS_H
#define LLE_BENCH_HARNESS_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Seconds on the monotonic clock. */
static inline double harness_now(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}

/* Sleeps for a (possibly fractional) number of seconds. */
static inline void harness_sleep(double seconds) {
    struct timespec wait;
    wait.tv_sec = (time_t)seconds;
    wait.tv_nsec = (long)((seconds - (double)wait.tv_sec) * 1e9);
    while (nanosleep(&wait, &wait) != 0) {
    }
}

/* splitmix64: one word of state per thread, so no workload's random choices
 * touch shared memory or call into libc (whose rand() may lock). */
typedef struct harness_rng {
    uint64_t state;
} harness_rng;

static inline harness_rng harness_rng_new(uint64_t seed) {
    harness_rng rng = {seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull};
    return rng;
}

static inline uint64_t harness_next(harness_rng *rng) {
    uint64_t z = (rng->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, bound), bound > 0 (multiply-shift, no division). */
static inline uint64_t harness_below(harness_rng *rng, uint64_t bound) {
    return (uint64_t)(((unsigned __int128)harness_next(rng) * bound) >> 64);
}

/* Uniform in [low, high]. */
static inline size_t harness_between(harness_rng *rng, size_t low, size_t high) {
    return low + (size_t)harness_below(rng, (uint64_t)(high - low) + 1);
}

/* True with the given percent chance. */
static inline int harness_chance(harness_rng *rng, unsigned percent) {
    return harness_below(rng, 100) < percent;
}

/* Stops the run: a workload's data check failed or the system refused a
 * resource the workload cannot do without. */
#define harness_fail(workload, ...)                                  \
    do {                                                             \
        fprintf(stderr, "%s: FAILED: ", (workload));                 \
        fprintf(stderr, __VA_ARGS__);                                \
        fputc('\n', stderr);                                         \
        exit(1);                                                     \
    } while (0)

/* The pattern for a block: derived from its address and size, so a block
 * that was overwritten by a neighbour, handed out twice at once with
 * different sizes, or truncated fails its check. */
static inline uint64_t harness_tag(const void *block, size_t size) {
    harness_rng mix = harness_rng_new((uint64_t)(uintptr_t)block ^ ((uint64_t)size << 48));
    return harness_next(&mix);
}

/* The bytes the pattern puts at the start of a block (up to 8) and as its
 * last byte. In a block of 8 bytes or less the last byte is one of the head's
 * and the last byte's value wins. */
typedef struct harness_pattern {
    unsigned char head[8];
    size_t head_length;
    unsigned char last;
} harness_pattern;

static inline harness_pattern harness_pattern_for(const void *block, size_t size) {
    uint64_t tag = harness_tag(block, size);
    harness_pattern pattern;
    pattern.head_length = size < sizeof pattern.head ? size : sizeof pattern.head;
    memcpy(pattern.head, &tag, sizeof pattern.head);
    pattern.last = (unsigned char)(tag >> 56);
    if (size <= sizeof pattern.head) {
        pattern.head[size - 1] = pattern.last;
    }
    return pattern;
}

/* Writes the pattern into the block. The middle stays untouched: the
 * workloads measure the allocator, not memset. */
static inline void harness_fill(void *block, size_t size) {
    harness_pattern pattern = harness_pattern_for(block, size);
    memcpy(block, pattern.head, pattern.head_length);
    ((unsigned char *)block)[size - 1] = pattern.last;
}

/* Checks what harness_fill wrote. */
static inline void harness_check(const char *workload, const void *block, size_t size) {
    harness_pattern pattern = harness_pattern_for(block, size);
    if (memcmp(block, pattern.head, pattern.head_length) != 0 || ((const unsigned char *)block)[size - 1] != pattern.last) {
        harness_fail(workload, "block %p of %zu bytes does not hold the pattern written into it", block, size);
    }
}

/* malloc that treats a refusal as a failed run: every workload here stays far
 * below the machine's memory. */
static inline void *harness_malloc(const char *workload, size_t size) {
    void *block = malloc(size);
    if (block == NULL) {
        harness_fail(workload, "malloc(%zu) returned NULL", size);
    }
    return block;
}

/* Starts a thread or fails the run. */
static inline void harness_spawn(const char *workload, pthread_t *thread, void *(*body)(void *), void *argument) {
    int error = pthread_create(thread, NULL, body, argument);
    if (error != 0) {
        harness_fail(workload, "pthread_create: %s", strerror(error));
    }
}

/* Starts a detached thread or fails the run. */
static inline void harness_spawn_detached(const char *workload, void *(*body)(void *), void *argument) {
    pthread_t thread;
    harness_spawn(workload, &thread, body, argument);
    pthread_detach(thread);
}

/* The result line run.sh parses: key=value pairs, throughput in operations
 * (one malloc and one free each) per second of wall time. */
static inline void harness_report(const char *workload, int threads, double operations, double seconds) {
    printf("workload=%s threads=%d operations=%.0f seconds=%.4f ops_per_s=%.0f check=ok\n", workload, threads,
           operations, seconds, operations / seconds);
    fflush(stdout);
}

/* A positive integer parsed from text, or a failed run. */
static inline long harness_parse_count(const char *workload, const char *text) {
    char *end = NULL;
    long value = strtol(text, &end, 10);
    if (end == text || *end != '\0' || value <= 0) {
        harness_fail(workload, "%s is not a positive integer", text);
    }
    return value;
}

/* A positive number of seconds parsed from text, or a failed run. */
static inline double harness_parse_seconds(const char *workload, const char *text) {
    char *end = NULL;
    double value = strtod(text, &end);
    if (end == text || *end != '\0' || !(value > 0)) {
        harness_fail(workload, "%s is not a positive number of seconds", text);
    }
    return value;
}

/* A positive count from argv[index], or the default when absent. */
static inline long harness_argument(const char *workload, int argc, char **argv, int index, long fallback) {
    return index < argc ? harness_parse_count(workload, argv[index]) : fallback;
}

/* A positive number of seconds from argv[index], or the default. */
static inline double harness_seconds(const char *workload, int argc, char **argv, int index, double fallback) {
    return index < argc ? harness_parse_seconds(workload, argv[index]) : fallback;
}

#endif
