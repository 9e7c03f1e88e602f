// PolyBench/C 4.2.1 symm: C := alpha*A*B + beta*C with A symmetric (lower triangle stored).
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

static void init_array(int m, int n, DATA_TYPE *alpha, DATA_TYPE *beta, DATA_TYPE C[M][N],
                       DATA_TYPE A[M][M], DATA_TYPE B[M][N]) {
    *alpha = 1.5;
    *beta = 1.2;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            C[i][j] = (DATA_TYPE)((i + j) % 100) / m;
            B[i][j] = (DATA_TYPE)((n + i - j) % 100) / m;
        }
    for (int i = 0; i < m; i++) {
        for (int j = 0; j <= i; j++) A[i][j] = (DATA_TYPE)((i + j) % 100) / m;
        for (int j = i + 1; j < m; j++) A[i][j] = -999; // regions of arrays that should not be used
    }
}

static void kernel_symm(int m, int n, DATA_TYPE alpha, DATA_TYPE beta, DATA_TYPE C[M][N],
                        DATA_TYPE A[M][M], DATA_TYPE B[M][N]) {
    DATA_TYPE temp2;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            temp2 = 0;
            for (int k = 0; k < i; k++) {
                C[k][j] += alpha * B[i][j] * A[i][k];
                temp2 += B[k][j] * A[i][k];
            }
            C[i][j] = beta * C[i][j] + alpha * B[i][j] * A[i][i] + alpha * temp2;
        }
}

int main(void) {
    DATA_TYPE alpha, beta;
    DATA_TYPE(*C)[N] = pb_alloc((size_t)M * N, sizeof(DATA_TYPE));
    DATA_TYPE(*A)[M] = pb_alloc((size_t)M * M, sizeof(DATA_TYPE));
    DATA_TYPE(*B)[N] = pb_alloc((size_t)M * N, sizeof(DATA_TYPE));
    init_array(M, N, &alpha, &beta, C, A, B);
    PB_START();
    kernel_symm(M, N, alpha, beta, C, A, B);
    PB_STOP();
    pb_checksum(C, sizeof(DATA_TYPE) * M * N);
    pb_report();
    free(C);
    free(A);
    free(B);
    return 0;
}
