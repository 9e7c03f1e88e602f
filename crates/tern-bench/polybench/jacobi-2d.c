// PolyBench/C 4.2.1 jacobi-2d: 2-D Jacobi stencil (5 points), TSTEPS double time steps.
#include "polybench.h"

#if defined(MINI_DATASET)
#define TSTEPS 20
#define N 30
#elif defined(SMALL_DATASET)
#define TSTEPS 40
#define N 90
#elif defined(MEDIUM_DATASET)
#define TSTEPS 100
#define N 250
#elif defined(LARGE_DATASET)
#define TSTEPS 500
#define N 1300
#else
#define TSTEPS 1000
#define N 2800
#endif

static void init_array(int n, DATA_TYPE A[N][N], DATA_TYPE B[N][N]) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            A[i][j] = ((DATA_TYPE)i * (j + 2) + 2) / n;
            B[i][j] = ((DATA_TYPE)i * (j + 3) + 3) / n;
        }
}

static void kernel_jacobi_2d(int tsteps, int n, DATA_TYPE A[N][N], DATA_TYPE B[N][N]) {
    for (int t = 0; t < tsteps; t++) {
        for (int i = 1; i < n - 1; i++)
            for (int j = 1; j < n - 1; j++)
                B[i][j] = SCALAR_VAL(0.2) *
                          (A[i][j] + A[i][j - 1] + A[i][1 + j] + A[1 + i][j] + A[i - 1][j]);
        for (int i = 1; i < n - 1; i++)
            for (int j = 1; j < n - 1; j++)
                A[i][j] = SCALAR_VAL(0.2) *
                          (B[i][j] + B[i][j - 1] + B[i][1 + j] + B[1 + i][j] + B[i - 1][j]);
    }
}

int main(void) {
    DATA_TYPE(*A)[N] = pb_alloc((size_t)N * N, sizeof(DATA_TYPE));
    DATA_TYPE(*B)[N] = pb_alloc((size_t)N * N, sizeof(DATA_TYPE));
    init_array(N, A, B);
    PB_START();
    kernel_jacobi_2d(TSTEPS, N, A, B);
    PB_STOP();
    pb_checksum(A, sizeof(DATA_TYPE) * N * N);
    pb_report();
    free(A);
    free(B);
    return 0;
}
