// Shared harness of Tern's PolyBench/C 4.2.1 kernels, written for this repository from
// the published algorithms.
//
// Each kernel:
//   - takes its problem size from one of MINI_DATASET, SMALL_DATASET, MEDIUM_DATASET,
//     LARGE_DATASET (default) or EXTRALARGE_DATASET, with PolyBench's sizes;
//   - initialises its arrays as PolyBench does, in double precision (DATA_TYPE);
//   - times only the kernel (PB_START / PB_STOP, as POLYBENCH_TIME does);
//   - feeds its output arrays to pb_checksum, in the order PolyBench dumps them;
//   - ends with pb_report(), which prints exactly two lines on stdout:
//         checksum: <16 hex digits, FNV-1a 64 over the output bytes>
//         time: <kernel seconds, %.9f>
// A checksum that differs between native code and any Wasm runtime fails the run.
#ifndef TERN_POLYBENCH_H
#define TERN_POLYBENCH_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if !defined(MINI_DATASET) && !defined(SMALL_DATASET) && !defined(MEDIUM_DATASET) && \
    !defined(LARGE_DATASET) && !defined(EXTRALARGE_DATASET)
#define LARGE_DATASET
#endif

// As in PolyBench, a kernel whose header picks another element type defines
// DATA_TYPE_IS_INT or DATA_TYPE_IS_FLOAT before including this file; double otherwise.
#if defined(DATA_TYPE_IS_INT)
typedef int DATA_TYPE;
#define SCALAR_VAL(x) x
#elif defined(DATA_TYPE_IS_FLOAT)
typedef float DATA_TYPE;
#define SCALAR_VAL(x) x##f
#define SQRT_FUN(x) sqrtf(x)
#define EXP_FUN(x) expf(x)
#define POW_FUN(x, y) powf(x, y)
#else
typedef double DATA_TYPE;
#define SCALAR_VAL(x) x
#define SQRT_FUN(x) sqrt(x)
#define EXP_FUN(x) exp(x)
#define POW_FUN(x, y) pow(x, y)
#endif

static double pb_t0, pb_t1;
static uint64_t pb_hash = 1469598103934665603ull;

static inline double pb_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

#define PB_START() (pb_t0 = pb_now())
#define PB_STOP() (pb_t1 = pb_now())

// Allocates a zeroed array of n elements of size sz, or exits with a message.
static inline void *pb_alloc(size_t n, size_t sz) {
    void *p = calloc(n, sz);
    if (!p) {
        fprintf(stderr, "polybench: out of memory allocating %zu bytes\n", n * sz);
        exit(1);
    }
    return p;
}

// Folds `bytes` bytes at `data` into the checksum.
static inline void pb_checksum(const void *data, size_t bytes) {
    const unsigned char *p = (const unsigned char *)data;
    for (size_t i = 0; i < bytes; i++) {
        pb_hash ^= p[i];
        pb_hash *= 1099511628211ull;
    }
}

static inline void pb_report(void) {
    printf("checksum: %016llx\ntime: %.9f\n", (unsigned long long)pb_hash, pb_t1 - pb_t0);
}

#endif
