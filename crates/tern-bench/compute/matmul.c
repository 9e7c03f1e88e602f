// matmul: dense double-precision matrix multiply C = A * B with N = 1024, written the way
// a typical user writes it: naive i-k-j loop order (the inner loop streams a row of B
// and a row of C), no blocking, no intrinsics. Plain * and + only, so native and Wasm
// round identically. The product is computed REPS = 4 times (each overwrites C) to get
// about 1 s of native run time. The checksum covers the bytes of C.
#include "polybench.h"

// MINI_DATASET is a quick correctness check; any other size runs the full problem.
#if defined(MINI_DATASET)
#define N 64
#define REPS 1
#else
#define N 1024
#define REPS 4
#endif

static void matmul(int n, double *restrict C, const double *restrict A,
                   const double *restrict B) {
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) C[i * n + j] = 0.0;
        for (int k = 0; k < n; k++) {
            double a = A[i * n + k];
            for (int j = 0; j < n; j++) C[i * n + j] += a * B[k * n + j];
        }
    }
}

int main(void) {
    double *A = pb_alloc((size_t)N * N, sizeof(double));
    double *B = pb_alloc((size_t)N * N, sizeof(double));
    double *C = pb_alloc((size_t)N * N, sizeof(double));
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            A[i * N + j] = (double)((i * j + 1) % N) / N;
            B[i * N + j] = (double)((i * (j + 3) + 7) % N) / N - 0.5;
        }
    PB_START();
    for (int r = 0; r < REPS; r++) matmul(N, C, A, B);
    PB_STOP();
    pb_checksum(C, sizeof(double) * N * N);
    pb_report();
    free(A);
    free(B);
    free(C);
    return 0;
}
