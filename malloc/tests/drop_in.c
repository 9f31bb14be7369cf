/* Every allocation function of liblle_malloc.so, run under LD_PRELOAD by
 * tests/drop_in.rs, with its data checked. Prints one line per check group
 * and "drop_in: all checks passed" at the end; any failure prints what and
 * exits 1. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* Not declared by every libc's headers. */
extern void *valloc(size_t size);
extern void *pvalloc(size_t size);

#define CHECK(condition, ...)                                                  \
    do {                                                                       \
        if (!(condition)) {                                                    \
            fprintf(stderr, "FAILED %s:%d: %s: ", __FILE__, __LINE__, #condition); \
            fprintf(stderr, __VA_ARGS__);                                      \
            fprintf(stderr, "\n");                                             \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

/* The byte a block seeded `seed` holds at `offset`. */
static unsigned char pattern(size_t seed, size_t offset) { return (unsigned char)(seed * 31 + offset * 7 + 1); }

static void fill(void *block, size_t size, size_t seed) {
    unsigned char *bytes = block;
    for (size_t i = 0; i < size; i++) bytes[i] = pattern(seed, i);
}

/* Whether the first `size` bytes still hold the pattern `seed`. */
static int holds(const void *block, size_t size, size_t seed) {
    const unsigned char *bytes = block;
    for (size_t i = 0; i < size; i++)
        if (bytes[i] != pattern(seed, i)) return 0;
    return 1;
}

static int aligned(const void *block, size_t align) { return ((uintptr_t)block & (align - 1)) == 0; }

/* Sizes no allocator can serve, through a volatile so that the compiler
 * neither warns about them nor folds the calls away. */
static volatile size_t huge_size = SIZE_MAX - 4096;
static volatile size_t half_of_everything = SIZE_MAX / 2;

/* The preload is in effect: `malloc` is this library's. */
static void check_preloaded(void) {
    Dl_info info;
    CHECK(dladdr((void *)malloc, &info) && info.dli_fname, "dladdr(malloc) failed");
    CHECK(strstr(info.dli_fname, "liblle_malloc") != NULL, "malloc comes from %s", info.dli_fname);
    void *block = malloc(100);
    /* 100 rounds to the 112-byte class; glibc's would say 104. */
    CHECK(malloc_usable_size(block) == 112, "usable size %zu", malloc_usable_size(block));
    free(block);
    printf("preloaded: malloc from %s\n", info.dli_fname);
}

static void check_malloc_and_free(void) {
    static const size_t sizes[] = {1, 8, 15, 16, 17, 64, 65, 100, 500, 1000, 1024, 1025, 4096, 70000, 1 << 20, 5 << 20};
    enum { COUNT = sizeof sizes / sizeof sizes[0] };
    void *blocks[COUNT];
    for (size_t i = 0; i < COUNT; i++) {
        blocks[i] = malloc(sizes[i]);
        CHECK(blocks[i] != NULL, "malloc(%zu)", sizes[i]);
        CHECK(aligned(blocks[i], 16), "malloc(%zu) = %p not 16-aligned", sizes[i], blocks[i]);
        CHECK(malloc_usable_size(blocks[i]) >= sizes[i], "usable %zu < %zu", malloc_usable_size(blocks[i]), sizes[i]);
        fill(blocks[i], sizes[i], i);
    }
    for (size_t i = 0; i < COUNT; i++) {
        CHECK(holds(blocks[i], sizes[i], i), "block of %zu lost its data", sizes[i]);
        free(blocks[i]);
    }
    /* malloc(0): a unique block, freeable. */
    void *zero = malloc(0), *other = malloc(0);
    CHECK(zero != NULL && other != NULL && zero != other, "malloc(0) = %p, %p", zero, other);
    free(zero);
    free(other);
    free(NULL);
    /* Failure: null and ENOMEM. */
    errno = 0;
    void *huge = malloc(huge_size);
    CHECK(huge == NULL && errno == ENOMEM, "malloc(huge) = %p, errno %d", huge, errno);
    printf("malloc/free: ok\n");
}

static void check_calloc(void) {
    /* Dirty a block, free it, and calloc the same size: reused, yet zero. */
    for (size_t size = 16; size <= 8192; size *= 2) {
        unsigned char *dirty = malloc(size);
        memset(dirty, 0xAB, size);
        free(dirty);
        unsigned char *zeroed = calloc(size / 8, 8);
        CHECK(zeroed != NULL, "calloc(%zu)", size);
        for (size_t i = 0; i < size; i++) CHECK(zeroed[i] == 0, "calloc(%zu) byte %zu = %#x", size, i, zeroed[i]);
        free(zeroed);
    }
    errno = 0;
    void *overflow = calloc(half_of_everything, 3);
    CHECK(overflow == NULL && errno == ENOMEM, "calloc overflow = %p, errno %d", overflow, errno);
    void *empty = calloc(0, 16);
    CHECK(empty != NULL, "calloc(0, 16)");
    free(empty);
    printf("calloc: ok\n");
}

static void check_realloc(void) {
    /* Across the 1 KiB boundary between the caches and the shared pool. */
    static const size_t steps[] = {1000, 1100, 900, 5000, 16, 1024, 1025, 1023, 200000, 3};
    size_t size = 10;
    unsigned char *block = realloc(NULL, size);
    CHECK(block != NULL, "realloc(NULL, 10)");
    fill(block, size, 99);
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        size_t next = steps[i];
        block = realloc(block, next);
        CHECK(block != NULL, "realloc to %zu", next);
        CHECK(aligned(block, 16), "realloc to %zu not aligned", next);
        size_t kept = size < next ? size : next;
        CHECK(holds(block, kept, 99), "realloc %zu -> %zu lost data", size, next);
        CHECK(malloc_usable_size(block) >= next, "usable after realloc");
        fill(block, next, 99);
        size = next;
    }
    /* realloc(p, 0) frees, as glibc's does. */
    CHECK(realloc(block, 0) == NULL, "realloc(p, 0)");
    errno = 0;
    void *keep = malloc(64);
    fill(keep, 64, 5);
    CHECK(realloc(keep, huge_size) == NULL && errno == ENOMEM, "realloc(huge)");
    CHECK(holds(keep, 64, 5), "failed realloc changed the block");
    free(keep);
    printf("realloc: ok\n");
}

static void check_alignment(void) {
    static const size_t alignments[] = {8, 16, 32, 64, 256, 4096, 65536, 1 << 21};
    static const size_t sizes[] = {0, 1, 24, 100, 3000, 70000};
    for (size_t a = 0; a < sizeof alignments / sizeof alignments[0]; a++) {
        size_t align = alignments[a];
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            size_t size = sizes[s], seed = a * 16 + s;
            void *blocks[3] = {NULL, NULL, NULL};
            CHECK(posix_memalign(&blocks[0], align, size) == 0, "posix_memalign(%zu, %zu)", align, size);
            blocks[1] = aligned_alloc(align, size);
            blocks[2] = memalign(align, size);
            for (int k = 0; k < 3; k++) {
                CHECK(blocks[k] != NULL && aligned(blocks[k], align), "function %d (%zu, %zu) = %p", k, align, size,
                      blocks[k]);
                CHECK(malloc_usable_size(blocks[k]) >= size, "usable size of aligned block");
                fill(blocks[k], size, seed + k);
            }
            for (int k = 0; k < 3; k++) {
                CHECK(holds(blocks[k], size, seed + k), "aligned block (%zu, %zu) lost data", align, size);
                free(blocks[k]);
            }
        }
    }
    long page = sysconf(_SC_PAGESIZE);
    void *paged = valloc(100);
    CHECK(paged && aligned(paged, (size_t)page), "valloc");
    fill(paged, 100, 1);
    CHECK(holds(paged, 100, 1), "valloc data");
    free(paged);
    void *rounded = pvalloc(100);
    CHECK(rounded && aligned(rounded, (size_t)page), "pvalloc");
    CHECK(malloc_usable_size(rounded) >= (size_t)page, "pvalloc rounds up to a page: %zu", malloc_usable_size(rounded));
    fill(rounded, (size_t)page, 2);
    CHECK(holds(rounded, (size_t)page, 2), "pvalloc data");
    free(rounded);

    /* Bad alignments: EINVAL. */
    void *untouched = (void *)0x1;
    CHECK(posix_memalign(&untouched, 24, 16) == EINVAL && untouched == (void *)0x1, "posix_memalign(24)");
    CHECK(posix_memalign(&untouched, 4, 16) == EINVAL, "posix_memalign(4): not a multiple of the pointer size");
    CHECK(posix_memalign(&untouched, 0, 16) == EINVAL, "posix_memalign(0)");
    errno = 0;
    CHECK(aligned_alloc(24, 48) == NULL && errno == EINVAL, "aligned_alloc(24)");
    errno = 0;
    CHECK(memalign(SIZE_MAX, 16) == NULL && errno == EINVAL, "memalign(SIZE_MAX)");
    /* memalign rounds a bad alignment up to a power of two, as glibc's does. */
    void *rounded_up = memalign(24, 100);
    CHECK(rounded_up && aligned(rounded_up, 32), "memalign(24) is aligned to 32: %p", rounded_up);
    fill(rounded_up, 100, 3);
    CHECK(holds(rounded_up, 100, 3), "memalign(24) data");
    free(rounded_up);
    void *unaligned = memalign(0, 40);
    CHECK(unaligned && malloc_usable_size(unaligned) >= 40, "memalign(0) is malloc");
    fill(unaligned, 40, 4);
    CHECK(holds(unaligned, 40, 4), "memalign(0) data");
    free(unaligned);
    errno = 0;
    CHECK(aligned_alloc(0, 16) == NULL && errno == EINVAL, "aligned_alloc(0)");
    printf("alignment: ok\n");
}

enum { THREADS = 4, PER_THREAD = 20000 };
static void *handed[THREADS][PER_THREAD];

static size_t handed_size(size_t thread, size_t i) { return 1 + (thread * 7919 + i * 104729) % 2000; }

/* Allocates this thread's row of blocks. */
static void *allocate_row(void *arg) {
    size_t thread = (size_t)arg;
    for (size_t i = 0; i < PER_THREAD; i++) {
        size_t size = handed_size(thread, i);
        handed[thread][i] = malloc(size);
        if (!handed[thread][i]) return (void *)1;
        fill(handed[thread][i], size, thread + i);
    }
    return NULL;
}

/* Checks and frees the next thread's row, allocating and freeing its own
 * blocks in between. */
static void *free_next_row(void *arg) {
    size_t thread = (size_t)arg, row = (thread + 1) % THREADS;
    for (size_t i = 0; i < PER_THREAD; i++) {
        size_t size = handed_size(row, i);
        if (!holds(handed[row][i], size, row + i)) return (void *)1;
        free(handed[row][i]);
        void *own = malloc(i % 300 + 1);
        if (!own) return (void *)1;
        free(own);
    }
    return NULL;
}

static void run_threads(void *(*body)(void *), const char *what) {
    pthread_t threads[THREADS];
    for (size_t t = 0; t < THREADS; t++) CHECK(pthread_create(&threads[t], NULL, body, (void *)t) == 0, "spawn");
    for (size_t t = 0; t < THREADS; t++) {
        void *result;
        pthread_join(threads[t], &result);
        CHECK(result == NULL, "%s: thread %zu failed", what, t);
    }
}

static void check_cross_thread_frees(void) {
    for (int round = 0; round < 3; round++) {
        run_threads(allocate_row, "allocate");
        run_threads(free_next_row, "free the next thread's blocks");
    }
    printf("cross-thread frees: ok\n");
}

static volatile int churning = 1;

static void *churn(void *arg) {
    size_t seed = (size_t)arg;
    void *kept[64] = {0};
    while (churning) {
        for (size_t i = 0; i < 64; i++) {
            free(kept[i]);
            kept[i] = malloc((seed + i * 37) % 3000 + 1);
            seed = seed * 6364136223846793005u + 1;
        }
    }
    for (size_t i = 0; i < 64; i++) free(kept[i]);
    return NULL;
}

/* Forks while other threads allocate and free; the child allocates. */
static void check_fork(void) {
    pthread_t threads[THREADS];
    for (size_t t = 0; t < THREADS; t++) CHECK(pthread_create(&threads[t], NULL, churn, (void *)t) == 0, "spawn");
    for (int round = 0; round < 20; round++) {
        usleep(2000);
        pid_t child = fork();
        CHECK(child >= 0, "fork");
        if (child == 0) {
            alarm(20); /* a lock left held would hang the child */
            void *blocks[1000];
            for (size_t i = 0; i < 1000; i++) {
                size_t size = (i * 131) % 5000 + 1;
                blocks[i] = malloc(size);
                if (!blocks[i]) _exit(2);
                fill(blocks[i], size, i);
            }
            for (size_t i = 0; i < 1000; i++) {
                if (!holds(blocks[i], (i * 131) % 5000 + 1, i)) _exit(3);
                free(blocks[i]);
            }
            char *text = strdup("the child allocates");
            if (!text) _exit(4);
            free(text);
            _exit(0);
        }
        int status;
        CHECK(waitpid(child, &status, 0) == child, "waitpid");
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child of round %d: status %#x", round, status);
    }
    churning = 0;
    for (size_t t = 0; t < THREADS; t++) pthread_join(threads[t], NULL);
    printf("fork: ok\n");
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    check_preloaded();
    check_malloc_and_free();
    check_calloc();
    check_realloc();
    check_alignment();
    check_cross_thread_frees();
    check_fork();
    printf("drop_in: all checks passed\n");
    return 0;
}
