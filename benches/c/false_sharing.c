/*
 * cache-thrash and cache-scratch: false sharing between threads through the
 * allocator (Berger et al., "Hoard: A Scalable Memory Allocator for
 * Multithreaded Applications", ASPLOS 2000: "active-false" and
 * "passive-false"), written from their published descriptions. One source,
 * two programs: build with -DFALSE_SHARING_PASSIVE=1 for cache-scratch,
 * -DFALSE_SHARING_PASSIVE=0 for cache-thrash.
 *
 * Each thread repeats `iterations` times: allocate an object of
 * `object_size` bytes, write every byte of it `repetitions` times (checking
 * the value after each write), free it. The threads share nothing, so the
 * time only grows if the allocator places two threads' objects on one cache
 * line, and the line then bounces between cores on every write.
 * - cache-thrash (active false sharing): the threads allocate their objects
 *   concurrently; an allocator that serves small objects from one shared
 *   region hands neighbouring bytes to different threads.
 * - cache-scratch (passive false sharing): the main thread first allocates
 *   one object per thread, back to back (likely on one cache line), and hands
 *   object t to thread t, which frees it before its loop. An allocator that
 *   gives that block back to the freeing thread's next malloc makes the
 *   threads write to one line.
 * The result is the wall time; throughput is objects (one malloc and one
 * free each) per second.
 *
 * Usage: cache-thrash|cache-scratch [threads] [iterations] [object_size] [repetitions]
 * Defaults are mimalloc-bench's `<threads> 1000 1 2000000`, with 2 threads.
 */
#include "harness.h"

#if FALSE_SHARING_PASSIVE
static const char *const WORKLOAD = "cache-scratch";
#else
static const char *const WORKLOAD = "cache-thrash";
#endif

typedef struct writer {
    pthread_t thread;
    /* cache-scratch: the object the main thread allocated for this thread. */
    unsigned char *handed_object;
    size_t iterations;
    size_t object_size;
    size_t repetitions;
} writer;

static void *write_objects(void *argument) {
    writer *self = argument;
    if (self->handed_object != NULL) {
        harness_check(WORKLOAD, self->handed_object, self->object_size);
        free(self->handed_object);
    }
    for (size_t iteration = 0; iteration < self->iterations; iteration++) {
        /* volatile: every write must reach the object's cache line, as in a
         * program that shares its data with another thread. */
        volatile unsigned char *object = harness_malloc(WORKLOAD, self->object_size);
        for (size_t repetition = 0; repetition < self->repetitions; repetition++) {
            for (size_t byte = 0; byte < self->object_size; byte++) {
                unsigned char value = (unsigned char)(repetition + byte);
                object[byte] = value;
                if (object[byte] != value) {
                    harness_fail(WORKLOAD, "byte %zu of object %p changed under its writer", byte, (void *)object);
                }
            }
        }
        free((void *)object);
    }
    return NULL;
}

int main(int argc, char **argv) {
    int threads = (int)harness_argument(WORKLOAD, argc, argv, 1, 2);
    size_t iterations = (size_t)harness_argument(WORKLOAD, argc, argv, 2, 1000);
    size_t object_size = (size_t)harness_argument(WORKLOAD, argc, argv, 3, 1);
    size_t repetitions = (size_t)harness_argument(WORKLOAD, argc, argv, 4, 2000000);

    writer *writers = harness_malloc(WORKLOAD, sizeof *writers * (size_t)threads);
    for (int t = 0; t < threads; t++) {
        writers[t].handed_object = NULL;
        writers[t].iterations = iterations;
        writers[t].object_size = object_size;
        writers[t].repetitions = repetitions;
        if (FALSE_SHARING_PASSIVE) {
            writers[t].handed_object = harness_malloc(WORKLOAD, object_size);
            harness_fill(writers[t].handed_object, object_size);
        }
    }
    double started = harness_now();
    for (int t = 0; t < threads; t++) {
        harness_spawn(WORKLOAD, &writers[t].thread, write_objects, &writers[t]);
    }
    for (int t = 0; t < threads; t++) {
        pthread_join(writers[t].thread, NULL);
    }
    double elapsed = harness_now() - started;
    free(writers);
    harness_report(WORKLOAD, threads, (double)threads * (double)iterations, elapsed);
    return 0;
}
