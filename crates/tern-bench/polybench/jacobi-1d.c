// PolyBench/C 4.2.1 jacobi-1d: 1-D Jacobi stencil, TSTEPS double time steps.
#include "polybench.h"

#if defined(MINI_DATASET)
#define TSTEPS 20
#define N 30
#elif defined(SMALL_DATASET)
#define TSTEPS 40
#define N 120
#elif defined(MEDIUM_DATASET)
#define TSTEPS 100
#define N 400
#elif defined(LARGE_DATASET)
#define TSTEPS 500
#define N 2000
#else
#define TSTEPS 1000
#define N 4000
#endif

static void init_array(int n, DATA_TYPE A[N], DATA_TYPE B[N]) {
    for (int i = 0; i < n; i++) {
        A[i] = ((DATA_TYPE)i + 2) / n;
        B[i] = ((DATA_TYPE)i + 3) / n;
    }
}

static void kernel_jacobi_1d(int tsteps, int n, DATA_TYPE A[N], DATA_TYPE B[N]) {
    for (int t = 0; t < tsteps; t++) {
        for (int i = 1; i < n - 1; i++) B[i] = 0.33333 * (A[i - 1] + A[i] + A[i + 1]);
        for (int i = 1; i < n - 1; i++) A[i] = 0.33333 * (B[i - 1] + B[i] + B[i + 1]);
    }
}

int main(void) {
    DATA_TYPE *A = pb_alloc(N, sizeof(DATA_TYPE));
    DATA_TYPE *B = pb_alloc(N, sizeof(DATA_TYPE));
    init_array(N, A, B);
    PB_START();
    kernel_jacobi_1d(TSTEPS, N, A, B);
    PB_STOP();
    pb_checksum(A, sizeof(DATA_TYPE) * N);
    pb_report();
    free(A);
    free(B);
    return 0;
}
