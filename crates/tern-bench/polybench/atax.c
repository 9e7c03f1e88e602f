// PolyBench/C 4.2.1 atax: y := A^T * (A * x), matrix transpose and vector multiplication.
#include "polybench.h"

#if defined(MINI_DATASET)
#define M 38
#define N 42
#elif defined(SMALL_DATASET)
#define M 116
#define N 124
#elif defined(MEDIUM_DATASET)
#define M 390
#define N 410
#elif defined(LARGE_DATASET)
#define M 1900
#define N 2100
#else
#define M 1800
#define N 2200
#endif

static void init_array(int m, int n, DATA_TYPE A[M][N], DATA_TYPE x[N]) {
    DATA_TYPE fn = (DATA_TYPE)n;
    for (int i = 0; i < n; i++) x[i] = 1 + (i / fn);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) A[i][j] = (DATA_TYPE)((i + j) % n) / (5 * m);
}

static void kernel_atax(int m, int n, DATA_TYPE A[M][N], DATA_TYPE x[N], DATA_TYPE y[N],
                        DATA_TYPE tmp[M]) {
    for (int i = 0; i < n; i++) y[i] = 0;
    for (int i = 0; i < m; i++) {
        tmp[i] = SCALAR_VAL(0.0);
        for (int j = 0; j < n; j++) tmp[i] = tmp[i] + A[i][j] * x[j];
        for (int j = 0; j < n; j++) y[j] = y[j] + A[i][j] * tmp[i];
    }
}

int main(void) {
    DATA_TYPE(*A)[N] = pb_alloc((size_t)M * N, sizeof(DATA_TYPE));
    DATA_TYPE *x = pb_alloc(N, sizeof(DATA_TYPE));
    DATA_TYPE *y = pb_alloc(N, sizeof(DATA_TYPE));
    DATA_TYPE *tmp = pb_alloc(M, sizeof(DATA_TYPE));
    init_array(M, N, A, x);
    PB_START();
    kernel_atax(M, N, A, x, y, tmp);
    PB_STOP();
    pb_checksum(y, sizeof(DATA_TYPE) * N);
    pb_report();
    free(A);
    free(x);
    free(y);
    free(tmp);
    return 0;
}
