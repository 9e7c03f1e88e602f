// PolyBench/C 4.2.1 cholesky: Cholesky decomposition A = L*L^T, in place in the lower triangle.
#include "polybench.h"

#if defined(MINI_DATASET)
#define N 40
#elif defined(SMALL_DATASET)
#define N 120
#elif defined(MEDIUM_DATASET)
#define N 400
#elif defined(LARGE_DATASET)
#define N 2000
#else
#define N 4000
#endif

static void init_array(int n, DATA_TYPE A[N][N]) {
    for (int i = 0; i < n; i++) {
        for (int j = 0; j <= i; j++) A[i][j] = (DATA_TYPE)(-j % n) / n + 1;
        for (int j = i + 1; j < n; j++) A[i][j] = 0;
        A[i][i] = 1;
    }
    // Make the matrix positive semi-definite: A := A * A^T.
    DATA_TYPE(*B)[N] = pb_alloc((size_t)N * N, sizeof(DATA_TYPE));
    for (int r = 0; r < n; ++r)
        for (int s = 0; s < n; ++s) B[r][s] = 0;
    for (int t = 0; t < n; ++t)
        for (int r = 0; r < n; ++r)
            for (int s = 0; s < n; ++s) B[r][s] += A[r][t] * A[s][t];
    for (int r = 0; r < n; ++r)
        for (int s = 0; s < n; ++s) A[r][s] = B[r][s];
    free(B);
}

static void kernel_cholesky(int n, DATA_TYPE A[N][N]) {
    for (int i = 0; i < n; i++) {
        // j < i
        for (int j = 0; j < i; j++) {
            for (int k = 0; k < j; k++) A[i][j] -= A[i][k] * A[j][k];
            A[i][j] /= A[j][j];
        }
        // i == j
        for (int k = 0; k < i; k++) A[i][i] -= A[i][k] * A[i][k];
        A[i][i] = SQRT_FUN(A[i][i]);
    }
}

int main(void) {
    DATA_TYPE(*A)[N] = pb_alloc((size_t)N * N, sizeof(DATA_TYPE));
    init_array(N, A);
    PB_START();
    kernel_cholesky(N, A);
    PB_STOP();
    // PolyBench dumps the lower triangle (j <= i) row by row.
    for (int i = 0; i < N; i++) pb_checksum(A[i], sizeof(DATA_TYPE) * (i + 1));
    pb_report();
    free(A);
    return 0;
}
