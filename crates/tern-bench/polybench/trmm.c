// PolyBench/C 4.2.1 trmm: B := alpha*A^T*B with A unit lower triangular.
#include "polybench.h"

#if defined(MINI_DATASET)
#define M 20
#define N 30
#elif defined(SMALL_DATASET)
#define M 60
#define N 80
#elif defined(MEDIUM_DATASET)
#define M 200
#define N 240
#elif defined(LARGE_DATASET)
#define M 1000
#define N 1200
#else
#define M 2000
#define N 2600
#endif

static void init_array(int m, int n, DATA_TYPE *alpha, DATA_TYPE A[M][M], DATA_TYPE B[M][N]) {
    *alpha = 1.5;
    for (int i = 0; i < m; i++) {
        for (int j = 0; j < i; j++) A[i][j] = (DATA_TYPE)((i + j) % m) / m;
        A[i][i] = 1.0;
        for (int j = 0; j < n; j++) B[i][j] = (DATA_TYPE)((n + (i - j)) % n) / n;
    }
}

static void kernel_trmm(int m, int n, DATA_TYPE alpha, DATA_TYPE A[M][M], DATA_TYPE B[M][N]) {
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            for (int k = i + 1; k < m; k++) B[i][j] += A[k][i] * B[k][j];
            B[i][j] = alpha * B[i][j];
        }
}

int main(void) {
    DATA_TYPE alpha;
    DATA_TYPE(*A)[M] = pb_alloc((size_t)M * M, sizeof(DATA_TYPE));
    DATA_TYPE(*B)[N] = pb_alloc((size_t)M * N, sizeof(DATA_TYPE));
    init_array(M, N, &alpha, A, B);
    PB_START();
    kernel_trmm(M, N, alpha, A, B);
    PB_STOP();
    pb_checksum(B, sizeof(DATA_TYPE) * M * N);
    pb_report();
    free(A);
    free(B);
    return 0;
}
