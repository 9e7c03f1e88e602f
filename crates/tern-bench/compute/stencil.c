// stencil: 2-D 5-point Jacobi relaxation on a 2048 x 2048 double grid with fixed
// boundary values: each sweep writes B[i][j] = 0.2 * (A[i][j] + A[i-1][j] + A[i+1][j]
// + A[i][j-1] + A[i][j+1]) for the interior, then the two buffers are swapped; ITERS =
// 400 sweeps, about 1 s natively. Plain + and * only, so native and Wasm round
// identically. The checksum covers the final grid.
#include "polybench.h"

// MINI_DATASET is a quick correctness check; any other size runs the full problem.
#if defined(MINI_DATASET)
#define N 64
#define ITERS 4
#else
#define N 2048
#define ITERS 400
#endif

static void sweep(int n, double *restrict B, const double *restrict A) {
    for (int i = 1; i < n - 1; i++)
        for (int j = 1; j < n - 1; j++)
            B[i * n + j] = 0.2 * (A[i * n + j] + A[(i - 1) * n + j] + A[(i + 1) * n + j] +
                                  A[i * n + j - 1] + A[i * n + j + 1]);
}

int main(void) {
    double *A = pb_alloc((size_t)N * N, sizeof(double));
    double *B = pb_alloc((size_t)N * N, sizeof(double));
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            double v = (double)((i * 7 + j * 13) % 101) / 101.0;
            if (i == 0 || j == 0 || i == N - 1 || j == N - 1) v = 1.0 + (double)(i % 3);
            A[i * N + j] = v;
            B[i * N + j] = v;  // boundary is the same in both buffers
        }
    PB_START();
    for (int t = 0; t < ITERS; t++) {
        sweep(N, B, A);
        double *tmp = A; A = B; B = tmp;
    }
    PB_STOP();
    pb_checksum(A, sizeof(double) * N * N);
    pb_report();
    free(A);
    free(B);
    return 0;
}
