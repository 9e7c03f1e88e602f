// PolyBench/C 4.2.1 gramschmidt: QR decomposition of A by modified Gram-Schmidt.
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

static void init_array(int m, int n, DATA_TYPE A[M][N], DATA_TYPE R[N][N], DATA_TYPE Q[M][N]) {
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            A[i][j] = (((DATA_TYPE)((i * j) % m) / m) * 100) + 10;
            Q[i][j] = 0.0;
        }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) R[i][j] = 0.0;
}

static void kernel_gramschmidt(int m, int n, DATA_TYPE A[M][N], DATA_TYPE R[N][N],
                               DATA_TYPE Q[M][N]) {
    DATA_TYPE nrm;
    for (int k = 0; k < n; k++) {
        nrm = SCALAR_VAL(0.0);
        for (int i = 0; i < m; i++) nrm += A[i][k] * A[i][k];
        R[k][k] = SQRT_FUN(nrm);
        for (int i = 0; i < m; i++) Q[i][k] = A[i][k] / R[k][k];
        for (int j = k + 1; j < n; j++) {
            R[k][j] = SCALAR_VAL(0.0);
            for (int i = 0; i < m; i++) R[k][j] += Q[i][k] * A[i][j];
            for (int i = 0; i < m; i++) A[i][j] = A[i][j] - Q[i][k] * R[k][j];
        }
    }
}

int main(void) {
    DATA_TYPE(*A)[N] = pb_alloc((size_t)M * N, sizeof(DATA_TYPE));
    DATA_TYPE(*R)[N] = pb_alloc((size_t)N * N, sizeof(DATA_TYPE));
    DATA_TYPE(*Q)[N] = pb_alloc((size_t)M * N, sizeof(DATA_TYPE));
    init_array(M, N, A, R, Q);
    PB_START();
    kernel_gramschmidt(M, N, A, R, Q);
    PB_STOP();
    pb_checksum(R, sizeof(DATA_TYPE) * N * N);
    pb_checksum(Q, sizeof(DATA_TYPE) * M * N);
    pb_report();
    free(A);
    free(R);
    free(Q);
    return 0;
}
