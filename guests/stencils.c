// Runs the loops Tern's vectoriser rewrites (1-D and 2-D stencils, a matrix product's
// inner loop, a scaled add) over many sizes, on separate and on overlapping arrays, and
// prints FNV-1a hashes of the results' bits, so two runs can be compared exactly.
// `stencils oob` then runs a stencil whose input runs past the end of linear memory,
// which traps part-way.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t fnv(const double *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    const unsigned char *b = (const unsigned char *)p;
    for (size_t i = 0; i < n * sizeof(double); i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

__attribute__((noinline)) void jacobi_1d(int n, const double *a, double *b) {
    for (int i = 1; i < n - 1; i++) b[i] = 0.33333 * (a[i - 1] + a[i] + a[i + 1]);
}

__attribute__((noinline)) void jacobi_2d(int n, const double *a, double *b) {
    for (int i = 1; i < n - 1; i++)
        for (int j = 1; j < n - 1; j++)
            b[i * n + j] = 0.2 * (a[i * n + j] + a[i * n + j - 1] + a[i * n + j + 1] +
                                  a[(i + 1) * n + j] + a[(i - 1) * n + j]);
}

__attribute__((noinline)) void gemm(int n, double alpha, const double *a, const double *b,
                                    double *c) {
    for (int i = 0; i < n; i++)
        for (int k = 0; k < n; k++)
            for (int j = 0; j < n; j++) c[i * n + j] += alpha * a[i * n + k] * b[k * n + j];
}

__attribute__((noinline)) void scale_add(int n, double s, const double *x, double *y) {
    for (int i = 0; i < n; i++) y[i] = y[i] * s + x[i] / 3.0;
}

int main(int argc, char **argv) {
    enum { N = 1 << 16 };
    double *a = malloc(N * sizeof(double)), *b = malloc(N * sizeof(double));
    double *c = malloc(N * sizeof(double));
    if (!a || !b || !c) return 1;
    uint32_t x = 2463534242u;
    for (int i = 0; i < N; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        a[i] = (double)(x % 20001) / 64.0 - 150.0;
        b[i] = c[i] = 0;
    }
    uint64_t all = 0;
    for (int n = 1; n <= 70; n++) {
        jacobi_1d(n, a, b);
        jacobi_1d(n, b + 1, b);          // in place, shifted: overlapping arrays
        jacobi_2d(n < 40 ? n : 40, a, c);
        gemm(n < 30 ? n : 30, 1.5, a, b, c);
        scale_add(n, 0.75, a + 7, c + 3);
        scale_add(n * 9, -1.25, c, c + 1); // overlapping
        uint64_t h = fnv(b, 4096) ^ (fnv(c, 4096) * 31);
        all = all * 1099511628211ull ^ h;
        if (n % 10 == 0) printf("n=%d: %016llx\n", n, (unsigned long long)h);
    }
    for (int rep = 0; rep < 40; rep++) {
        jacobi_1d(N, a, b);
        jacobi_1d(N, b, a);
        jacobi_2d(250, a, c);
        scale_add(N - 8, 1.0 / 1024, b, a + 8);
    }
    all = all * 1099511628211ull ^ fnv(a, N) ^ fnv(c, N);
    printf("final: %016llx\n", (unsigned long long)all);
    fflush(stdout);
    if (argc > 1 && strcmp(argv[1], "oob") == 0) {
        // The last 64 doubles of memory, read 128 long: the loop stores into b until
        // its reads leave memory.
        uintptr_t end = __builtin_wasm_memory_size(0) * 65536;
        jacobi_1d(128, (const double *)(end - 64 * sizeof(double)), b);
        printf("not reached: %f\n", b[5]);
    }
    return 0;
}
