// PolyBench/C 4.2.1 gesummv: y := alpha*A*x + beta*B*x (scalar, vector and matrix multiplication).
#include "polybench.h"

#if defined(MINI_DATASET)
#define N 30
#elif defined(SMALL_DATASET)
#define N 90
#elif defined(MEDIUM_DATASET)
#define N 250
#elif defined(LARGE_DATASET)
#define N 1300
#else
#define N 2800
#endif

static void init_array(int n, DATA_TYPE *alpha, DATA_TYPE *beta, DATA_TYPE A[N][N],
                       DATA_TYPE B[N][N], DATA_TYPE x[N]) {
    *alpha = 1.5;
    *beta = 1.2;
    for (int i = 0; i < n; i++) {
        x[i] = (DATA_TYPE)(i % n) / n;
        for (int j = 0; j < n; j++) {
            A[i][j] = (DATA_TYPE)((i * j + 1) % n) / n;
            B[i][j] = (DATA_TYPE)((i * j + 2) % n) / n;
        }
    }
}

static void kernel_gesummv(int n, DATA_TYPE alpha, DATA_TYPE beta, DATA_TYPE A[N][N],
                           DATA_TYPE B[N][N], DATA_TYPE tmp[N], DATA_TYPE x[N], DATA_TYPE y[N]) {
    for (int i = 0; i < n; i++) {
        tmp[i] = SCALAR_VAL(0.0);
        y[i] = SCALAR_VAL(0.0);
        for (int j = 0; j < n; j++) {
            tmp[i] = A[i][j] * x[j] + tmp[i];
            y[i] = B[i][j] * x[j] + y[i];
        }
        y[i] = alpha * tmp[i] + beta * y[i];
    }
}

int main(void) {
    DATA_TYPE alpha, beta;
    DATA_TYPE(*A)[N] = pb_alloc((size_t)N * N, sizeof(DATA_TYPE));
    DATA_TYPE(*B)[N] = pb_alloc((size_t)N * N, sizeof(DATA_TYPE));
    DATA_TYPE *tmp = pb_alloc(N, sizeof(DATA_TYPE));
    DATA_TYPE *x = pb_alloc(N, sizeof(DATA_TYPE));
    DATA_TYPE *y = pb_alloc(N, sizeof(DATA_TYPE));
    init_array(N, &alpha, &beta, A, B, x);
    PB_START();
    kernel_gesummv(N, alpha, beta, A, B, tmp, x, y);
    PB_STOP();
    pb_checksum(y, sizeof(DATA_TYPE) * N);
    pb_report();
    free(A);
    free(B);
    free(tmp);
    free(x);
    free(y);
    return 0;
}
