// PolyBench/C 4.2.1 ludcmp: LU decomposition of A, then forward and back substitution for A*x = b.
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

static void init_array(int n, DATA_TYPE A[N][N], DATA_TYPE b[N], DATA_TYPE x[N], DATA_TYPE y[N]) {
    DATA_TYPE fn = (DATA_TYPE)n;
    for (int i = 0; i < n; i++) {
        x[i] = 0;
        y[i] = 0;
        b[i] = (i + 1) / fn / 2.0 + 4;
    }
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

static void kernel_ludcmp(int n, DATA_TYPE A[N][N], DATA_TYPE b[N], DATA_TYPE x[N],
                          DATA_TYPE y[N]) {
    DATA_TYPE w;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < i; j++) {
            w = A[i][j];
            for (int k = 0; k < j; k++) w -= A[i][k] * A[k][j];
            A[i][j] = w / A[j][j];
        }
        for (int j = i; j < n; j++) {
            w = A[i][j];
            for (int k = 0; k < i; k++) w -= A[i][k] * A[k][j];
            A[i][j] = w;
        }
    }
    for (int i = 0; i < n; i++) {
        w = b[i];
        for (int j = 0; j < i; j++) w -= A[i][j] * y[j];
        y[i] = w;
    }
    for (int i = n - 1; i >= 0; i--) {
        w = y[i];
        for (int j = i + 1; j < n; j++) w -= A[i][j] * x[j];
        x[i] = w / A[i][i];
    }
}

int main(void) {
    DATA_TYPE(*A)[N] = pb_alloc((size_t)N * N, sizeof(DATA_TYPE));
    DATA_TYPE *b = pb_alloc(N, sizeof(DATA_TYPE));
    DATA_TYPE *x = pb_alloc(N, sizeof(DATA_TYPE));
    DATA_TYPE *y = pb_alloc(N, sizeof(DATA_TYPE));
    init_array(N, A, b, x, y);
    PB_START();
    kernel_ludcmp(N, A, b, x, y);
    PB_STOP();
    pb_checksum(x, sizeof(DATA_TYPE) * N);
    pb_report();
    free(A);
    free(b);
    free(x);
    free(y);
    return 0;
}
