// PolyBench/C 4.2.1 seidel-2d: 2-D Gauss-Seidel stencil (9 points), in place, TSTEPS steps.
#include "polybench.h"

#if defined(MINI_DATASET)
#define TSTEPS 20
#define N 40
#elif defined(SMALL_DATASET)
#define TSTEPS 40
#define N 120
#elif defined(MEDIUM_DATASET)
#define TSTEPS 100
#define N 400
#elif defined(LARGE_DATASET)
#define TSTEPS 500
#define N 2000
#else
#define TSTEPS 1000
#define N 4000
#endif

static void init_array(int n, DATA_TYPE A[N][N]) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) A[i][j] = ((DATA_TYPE)i * (j + 2) + 2) / n;
}

static void kernel_seidel_2d(int tsteps, int n, DATA_TYPE A[N][N]) {
    for (int t = 0; t <= tsteps - 1; t++)
        for (int i = 1; i <= n - 2; i++)
            for (int j = 1; j <= n - 2; j++)
                A[i][j] = (A[i - 1][j - 1] + A[i - 1][j] + A[i - 1][j + 1] + A[i][j - 1] + A[i][j] +
                           A[i][j + 1] + A[i + 1][j - 1] + A[i + 1][j] + A[i + 1][j + 1]) /
                          SCALAR_VAL(9.0);
}

int main(void) {
    DATA_TYPE(*A)[N] = pb_alloc((size_t)N * N, sizeof(DATA_TYPE));
    init_array(N, A);
    PB_START();
    kernel_seidel_2d(TSTEPS, N, A);
    PB_STOP();
    pb_checksum(A, sizeof(DATA_TYPE) * N * N);
    pb_report();
    free(A);
    return 0;
}
