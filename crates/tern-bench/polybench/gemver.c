// PolyBench/C 4.2.1 gemver: A += u1*v1^T + u2*v2^T, x := beta*A^T*y + z, w := alpha*A*x.
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

static void init_array(int n, DATA_TYPE *alpha, DATA_TYPE *beta, DATA_TYPE A[N][N],
                       DATA_TYPE u1[N], DATA_TYPE v1[N], DATA_TYPE u2[N], DATA_TYPE v2[N],
                       DATA_TYPE w[N], DATA_TYPE x[N], DATA_TYPE y[N], DATA_TYPE z[N]) {
    *alpha = 1.5;
    *beta = 1.2;
    DATA_TYPE fn = (DATA_TYPE)n;
    for (int i = 0; i < n; i++) {
        u1[i] = i;
        u2[i] = ((i + 1) / fn) / 2.0;
        v1[i] = ((i + 1) / fn) / 4.0;
        v2[i] = ((i + 1) / fn) / 6.0;
        y[i] = ((i + 1) / fn) / 8.0;
        z[i] = ((i + 1) / fn) / 9.0;
        x[i] = 0.0;
        w[i] = 0.0;
        for (int j = 0; j < n; j++) A[i][j] = (DATA_TYPE)(i * j % n) / n;
    }
}

static void kernel_gemver(int n, DATA_TYPE alpha, DATA_TYPE beta, DATA_TYPE A[N][N],
                          DATA_TYPE u1[N], DATA_TYPE v1[N], DATA_TYPE u2[N], DATA_TYPE v2[N],
                          DATA_TYPE w[N], DATA_TYPE x[N], DATA_TYPE y[N], DATA_TYPE z[N]) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) A[i][j] = A[i][j] + u1[i] * v1[j] + u2[i] * v2[j];
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) x[i] = x[i] + beta * A[j][i] * y[j];
    for (int i = 0; i < n; i++) x[i] = x[i] + z[i];
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) w[i] = w[i] + alpha * A[i][j] * x[j];
}

int main(void) {
    DATA_TYPE alpha, beta;
    DATA_TYPE(*A)[N] = pb_alloc((size_t)N * N, sizeof(DATA_TYPE));
    DATA_TYPE *u1 = pb_alloc(N, sizeof(DATA_TYPE));
    DATA_TYPE *v1 = pb_alloc(N, sizeof(DATA_TYPE));
    DATA_TYPE *u2 = pb_alloc(N, sizeof(DATA_TYPE));
    DATA_TYPE *v2 = pb_alloc(N, sizeof(DATA_TYPE));
    DATA_TYPE *w = pb_alloc(N, sizeof(DATA_TYPE));
    DATA_TYPE *x = pb_alloc(N, sizeof(DATA_TYPE));
    DATA_TYPE *y = pb_alloc(N, sizeof(DATA_TYPE));
    DATA_TYPE *z = pb_alloc(N, sizeof(DATA_TYPE));
    init_array(N, &alpha, &beta, A, u1, v1, u2, v2, w, x, y, z);
    PB_START();
    kernel_gemver(N, alpha, beta, A, u1, v1, u2, v2, w, x, y, z);
    PB_STOP();
    pb_checksum(w, sizeof(DATA_TYPE) * N);
    pb_report();
    free(A);
    free(u1);
    free(v1);
    free(u2);
    free(v2);
    free(w);
    free(x);
    free(y);
    free(z);
    return 0;
}
