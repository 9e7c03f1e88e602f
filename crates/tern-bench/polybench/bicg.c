// PolyBench/C 4.2.1 bicg: BiCG sub-kernel, s := A^T * r and q := A * p.
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

static void init_array(int m, int n, DATA_TYPE A[N][M], DATA_TYPE r[N], DATA_TYPE p[M]) {
    for (int i = 0; i < m; i++) p[i] = (DATA_TYPE)(i % m) / m;
    for (int i = 0; i < n; i++) {
        r[i] = (DATA_TYPE)(i % n) / n;
        for (int j = 0; j < m; j++) A[i][j] = (DATA_TYPE)(i * (j + 1) % n) / n;
    }
}

static void kernel_bicg(int m, int n, DATA_TYPE A[N][M], DATA_TYPE s[M], DATA_TYPE q[N],
                        DATA_TYPE p[M], DATA_TYPE r[N]) {
    for (int i = 0; i < m; i++) s[i] = 0;
    for (int i = 0; i < n; i++) {
        q[i] = SCALAR_VAL(0.0);
        for (int j = 0; j < m; j++) {
            s[j] = s[j] + r[i] * A[i][j];
            q[i] = q[i] + A[i][j] * p[j];
        }
    }
}

int main(void) {
    DATA_TYPE(*A)[M] = pb_alloc((size_t)N * M, sizeof(DATA_TYPE));
    DATA_TYPE *s = pb_alloc(M, sizeof(DATA_TYPE));
    DATA_TYPE *q = pb_alloc(N, sizeof(DATA_TYPE));
    DATA_TYPE *p = pb_alloc(M, sizeof(DATA_TYPE));
    DATA_TYPE *r = pb_alloc(N, sizeof(DATA_TYPE));
    init_array(M, N, A, r, p);
    PB_START();
    kernel_bicg(M, N, A, s, q, p, r);
    PB_STOP();
    pb_checksum(s, sizeof(DATA_TYPE) * M);
    pb_checksum(q, sizeof(DATA_TYPE) * N);
    pb_report();
    free(A);
    free(s);
    free(q);
    free(p);
    free(r);
    return 0;
}
