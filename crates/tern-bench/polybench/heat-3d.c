// PolyBench/C 4.2.1 heat-3d: heat equation over a 3-D grid, TSTEPS double time steps.
#include "polybench.h"

#if defined(MINI_DATASET)
#define TSTEPS 20
#define N 10
#elif defined(SMALL_DATASET)
#define TSTEPS 40
#define N 20
#elif defined(MEDIUM_DATASET)
#define TSTEPS 100
#define N 40
#elif defined(LARGE_DATASET)
#define TSTEPS 500
#define N 120
#else
#define TSTEPS 1000
#define N 200
#endif

static void init_array(int n, DATA_TYPE A[N][N][N], DATA_TYPE B[N][N][N]) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            for (int k = 0; k < n; k++)
                A[i][j][k] = B[i][j][k] = (DATA_TYPE)(i + j + (n - k)) * 10 / (n);
}

// As in PolyBench, the time loop runs to the TSTEPS macro, not the tsteps argument.
static void kernel_heat_3d(int tsteps, int n, DATA_TYPE A[N][N][N], DATA_TYPE B[N][N][N]) {
    (void)tsteps;
    for (int t = 1; t <= TSTEPS; t++) {
        for (int i = 1; i < n - 1; i++) {
            for (int j = 1; j < n - 1; j++) {
                for (int k = 1; k < n - 1; k++) {
                    B[i][j][k] =
                        SCALAR_VAL(0.125) *
                            (A[i + 1][j][k] - SCALAR_VAL(2.0) * A[i][j][k] + A[i - 1][j][k]) +
                        SCALAR_VAL(0.125) *
                            (A[i][j + 1][k] - SCALAR_VAL(2.0) * A[i][j][k] + A[i][j - 1][k]) +
                        SCALAR_VAL(0.125) *
                            (A[i][j][k + 1] - SCALAR_VAL(2.0) * A[i][j][k] + A[i][j][k - 1]) +
                        A[i][j][k];
                }
            }
        }
        for (int i = 1; i < n - 1; i++) {
            for (int j = 1; j < n - 1; j++) {
                for (int k = 1; k < n - 1; k++) {
                    A[i][j][k] =
                        SCALAR_VAL(0.125) *
                            (B[i + 1][j][k] - SCALAR_VAL(2.0) * B[i][j][k] + B[i - 1][j][k]) +
                        SCALAR_VAL(0.125) *
                            (B[i][j + 1][k] - SCALAR_VAL(2.0) * B[i][j][k] + B[i][j - 1][k]) +
                        SCALAR_VAL(0.125) *
                            (B[i][j][k + 1] - SCALAR_VAL(2.0) * B[i][j][k] + B[i][j][k - 1]) +
                        B[i][j][k];
                }
            }
        }
    }
}

int main(void) {
    DATA_TYPE(*A)[N][N] = pb_alloc((size_t)N * N * N, sizeof(DATA_TYPE));
    DATA_TYPE(*B)[N][N] = pb_alloc((size_t)N * N * N, sizeof(DATA_TYPE));
    init_array(N, A, B);
    PB_START();
    kernel_heat_3d(TSTEPS, N, A, B);
    PB_STOP();
    pb_checksum(A, sizeof(DATA_TYPE) * N * N * N);
    pb_report();
    free(A);
    free(B);
    return 0;
}
