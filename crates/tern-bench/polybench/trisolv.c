// PolyBench/C 4.2.1 trisolv: forward substitution, solves L*x = b for lower triangular L.
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

static void init_array(int n, DATA_TYPE L[N][N], DATA_TYPE x[N], DATA_TYPE b[N]) {
    for (int i = 0; i < n; i++) {
        x[i] = -999;
        b[i] = i;
        for (int j = 0; j <= i; j++) L[i][j] = (DATA_TYPE)(i + n - j + 1) * 2 / n;
    }
}

static void kernel_trisolv(int n, DATA_TYPE L[N][N], DATA_TYPE x[N], DATA_TYPE b[N]) {
    for (int i = 0; i < n; i++) {
        x[i] = b[i];
        for (int j = 0; j < i; j++) x[i] -= L[i][j] * x[j];
        x[i] = x[i] / L[i][i];
    }
}

int main(void) {
    DATA_TYPE(*L)[N] = pb_alloc((size_t)N * N, sizeof(DATA_TYPE));
    DATA_TYPE *x = pb_alloc(N, sizeof(DATA_TYPE));
    DATA_TYPE *b = pb_alloc(N, sizeof(DATA_TYPE));
    init_array(N, L, x, b);
    PB_START();
    kernel_trisolv(N, L, x, b);
    PB_STOP();
    pb_checksum(x, sizeof(DATA_TYPE) * N);
    pb_report();
    free(L);
    free(x);
    free(b);
    return 0;
}
