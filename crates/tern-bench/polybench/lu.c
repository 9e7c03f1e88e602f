// PolyBench/C 4.2.1 lu: LU decomposition of A in place, without pivoting.
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
    // Make the matrix positive semi-definite (not necessary for LU, but PolyBench
    // shares this code with cholesky): A := A*A^T.
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

static void kernel_lu(int n, DATA_TYPE A[N][N]) {
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < i; j++) {
            for (int k = 0; k < j; k++) A[i][j] -= A[i][k] * A[k][j];
            A[i][j] /= A[j][j];
        }
        for (int j = i; j < n; j++)
            for (int k = 0; k < i; k++) A[i][j] -= A[i][k] * A[k][j];
    }
}

int main(void) {
    DATA_TYPE(*A)[N] = pb_alloc((size_t)N * N, sizeof(DATA_TYPE));
    init_array(N, A);
    PB_START();
    kernel_lu(N, A);
    PB_STOP();
    pb_checksum(A, sizeof(DATA_TYPE) * N * N);
    pb_report();
    free(A);
    return 0;
}
