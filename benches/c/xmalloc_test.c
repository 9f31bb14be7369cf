/*
 * xmalloc-test: producers allocate, consumers free (Lever and Boreham,
 * "malloc() Performance in a Multithreaded Linux Environment", USENIX 2000;
 * the version mimalloc-bench runs as `xmalloc-test -w <threads> -t 5 -s 64`),
 * written from its published description.
 *
 * Half the threads (at least one) only allocate: each fills batches of
 * BATCH_BLOCKS blocks of random size in [8, 2 * size], writes each block's
 * pattern and pushes the batch onto a shared queue of at most QUEUE_BATCHES
 * batches (waiting while it is full). The other threads only free: each pops
 * a batch, checks and frees every block in it, and frees the batch itself.
 * Every block is therefore freed by a thread that did not allocate it, which
 * thread-caching allocators handle worst. After `seconds` the producers
 * stop; the consumers drain the queue. Throughput is blocks freed (one malloc
 * and one free each) per second, from the start until the queue is drained.
 *
 * Usage: xmalloc-test [-w threads] [-t seconds] [-s size]
 * Defaults: 2 threads (one producer, one consumer), 5 seconds, size 64.
 */
#include <stdatomic.h>
#include <unistd.h>

#include "harness.h"

static const char *const WORKLOAD = "xmalloc-test";

enum { BATCH_BLOCKS = 256, QUEUE_BATCHES = 64 };

typedef struct batch {
    struct batch *next;
    void *blocks[BATCH_BLOCKS];
    uint32_t sizes[BATCH_BLOCKS];
} batch;

/* A bounded FIFO of batches under one lock: a handful of lock operations per
 * BATCH_BLOCKS mallocs, so the lock is not what the workload measures. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t not_empty;
    pthread_cond_t not_full;
    batch *head;
    batch *tail;
    int length;
    int producers_running;
} queue = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, NULL, 0, 0};

static atomic_bool stop_requested;
static size_t mean_size = 64;

typedef struct worker {
    pthread_t thread;
    harness_rng rng;
    double blocks_freed;
} worker;

static void push_batch(batch *full) {
    pthread_mutex_lock(&queue.lock);
    while (queue.length == QUEUE_BATCHES) {
        pthread_cond_wait(&queue.not_full, &queue.lock);
    }
    full->next = NULL;
    if (queue.tail != NULL) {
        queue.tail->next = full;
    } else {
        queue.head = full;
    }
    queue.tail = full;
    queue.length++;
    pthread_cond_signal(&queue.not_empty);
    pthread_mutex_unlock(&queue.lock);
}

/* The next batch, or NULL once the producers have stopped and the queue is
 * empty. */
static batch *pop_batch(void) {
    pthread_mutex_lock(&queue.lock);
    while (queue.length == 0 && queue.producers_running > 0) {
        pthread_cond_wait(&queue.not_empty, &queue.lock);
    }
    batch *taken = queue.head;
    if (taken != NULL) {
        queue.head = taken->next;
        if (queue.head == NULL) {
            queue.tail = NULL;
        }
        queue.length--;
        pthread_cond_signal(&queue.not_full);
    }
    pthread_mutex_unlock(&queue.lock);
    return taken;
}

static void *produce(void *argument) {
    worker *self = argument;
    while (!atomic_load_explicit(&stop_requested, memory_order_relaxed)) {
        batch *full = harness_malloc(WORKLOAD, sizeof *full);
        for (int i = 0; i < BATCH_BLOCKS; i++) {
            size_t size = harness_between(&self->rng, 8, 2 * mean_size);
            full->blocks[i] = harness_malloc(WORKLOAD, size);
            full->sizes[i] = (uint32_t)size;
            harness_fill(full->blocks[i], size);
        }
        push_batch(full);
    }
    pthread_mutex_lock(&queue.lock);
    queue.producers_running--;
    pthread_cond_broadcast(&queue.not_empty);
    pthread_mutex_unlock(&queue.lock);
    return NULL;
}

static void *consume(void *argument) {
    worker *self = argument;
    batch *full;
    while ((full = pop_batch()) != NULL) {
        for (int i = 0; i < BATCH_BLOCKS; i++) {
            harness_check(WORKLOAD, full->blocks[i], full->sizes[i]);
            free(full->blocks[i]);
        }
        free(full);
        self->blocks_freed += BATCH_BLOCKS;
    }
    return NULL;
}

int main(int argc, char **argv) {
    int threads = 2;
    double seconds = 5.0;
    int option;
    while ((option = getopt(argc, argv, "w:t:s:")) != -1) {
        switch (option) {
        case 'w':
            threads = (int)harness_parse_count(WORKLOAD, optarg);
            break;
        case 't':
            seconds = harness_parse_seconds(WORKLOAD, optarg);
            break;
        case 's':
            mean_size = (size_t)harness_parse_count(WORKLOAD, optarg);
            break;
        default:
            harness_fail(WORKLOAD, "usage: xmalloc-test [-w threads] [-t seconds] [-s size]");
        }
    }
    if (mean_size < 4 || 2 * mean_size > UINT32_MAX) {
        harness_fail(WORKLOAD, "size %zu is out of range", mean_size);
    }
    int producers = threads / 2 > 0 ? threads / 2 : 1;
    int consumers = threads - producers > 0 ? threads - producers : 1;
    queue.producers_running = producers;

    worker *workers = harness_malloc(WORKLOAD, sizeof *workers * (size_t)(producers + consumers));
    double started = harness_now();
    for (int i = 0; i < producers + consumers; i++) {
        workers[i].rng = harness_rng_new((uint64_t)i + 1);
        workers[i].blocks_freed = 0;
        harness_spawn(WORKLOAD, &workers[i].thread, i < producers ? produce : consume, &workers[i]);
    }
    harness_sleep(seconds);
    atomic_store(&stop_requested, true);
    double operations = 0;
    for (int i = 0; i < producers + consumers; i++) {
        pthread_join(workers[i].thread, NULL);
        operations += workers[i].blocks_freed;
    }
    double elapsed = harness_now() - started;
    free(workers);
    harness_report(WORKLOAD, producers + consumers, operations, elapsed);
    return 0;
}
