// PolyBench/C 4.2.1 mvt: matrix-vector products x1 := x1 + A*y_1 and x2 := x2 + A^T*y_2.
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

static void init_array(int n, DATA_TYPE x1[N], DATA_TYPE x2[N], DATA_TYPE y_1[N],
                       DATA_TYPE y_2[N], DATA_TYPE A[N][N]) {
    for (int i = 0; i < n; i++) {
        x1[i] = (DATA_TYPE)(i % n) / n;
        x2[i] = (DATA_TYPE)((i + 1) % n) / n;
        y_1[i] = (DATA_TYPE)((i + 3) % n) / n;
        y_2[i] = (DATA_TYPE)((i + 4) % n) / n;
        for (int j = 0; j < n; j++) A[i][j] = (DATA_TYPE)(i * j % n) / n;
    }
}

static void kernel_mvt(int n, DATA_TYPE x1[N], DATA_TYPE x2[N], DATA_TYPE y_1[N],
                       DATA_TYPE y_2[N], DATA_TYPE A[N][N]) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) x1[i] = x1[i] + A[i][j] * y_1[j];
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) x2[i] = x2[i] + A[j][i] * y_2[j];
}

int main(void) {
    DATA_TYPE(*A)[N] = pb_alloc((size_t)N * N, sizeof(DATA_TYPE));
    DATA_TYPE *x1 = pb_alloc(N, sizeof(DATA_TYPE));
    DATA_TYPE *x2 = pb_alloc(N, sizeof(DATA_TYPE));
    DATA_TYPE *y_1 = pb_alloc(N, sizeof(DATA_TYPE));
    DATA_TYPE *y_2 = pb_alloc(N, sizeof(DATA_TYPE));
    init_array(N, x1, x2, y_1, y_2, A);
    PB_START();
    kernel_mvt(N, x1, x2, y_1, y_2, A);
    PB_STOP();
    pb_checksum(x1, sizeof(DATA_TYPE) * N);
    pb_checksum(x2, sizeof(DATA_TYPE) * N);
    pb_report();
    free(A);
    free(x1);
    free(x2);
    free(y_1);
    free(y_2);
    return 0;
}
