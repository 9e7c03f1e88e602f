// PolyBench/C 4.2.1 2mm: D := alpha*A*B*C + beta*D, two chained matrix multiplications.
#include "polybench.h"

#if defined(MINI_DATASET)
#define NI 16
#define NJ 18
#define NK 22
#define NL 24
#elif defined(SMALL_DATASET)
#define NI 40
#define NJ 50
#define NK 70
#define NL 80
#elif defined(MEDIUM_DATASET)
#define NI 180
#define NJ 190
#define NK 210
#define NL 220
#elif defined(LARGE_DATASET)
#define NI 800
#define NJ 900
#define NK 1100
#define NL 1200
#else
#define NI 1600
#define NJ 1800
#define NK 2200
#define NL 2400
#endif

static void init_array(int ni, int nj, int nk, int nl, DATA_TYPE *alpha, DATA_TYPE *beta,
                       DATA_TYPE A[NI][NK], DATA_TYPE B[NK][NJ], DATA_TYPE C[NJ][NL],
                       DATA_TYPE D[NI][NL]) {
    *alpha = 1.5;
    *beta = 1.2;
    for (int i = 0; i < ni; i++)
        for (int j = 0; j < nk; j++) A[i][j] = (DATA_TYPE)((i * j + 1) % ni) / ni;
    for (int i = 0; i < nk; i++)
        for (int j = 0; j < nj; j++) B[i][j] = (DATA_TYPE)(i * (j + 1) % nj) / nj;
    for (int i = 0; i < nj; i++)
        for (int j = 0; j < nl; j++) C[i][j] = (DATA_TYPE)((i * (j + 3) + 1) % nl) / nl;
    for (int i = 0; i < ni; i++)
        for (int j = 0; j < nl; j++) D[i][j] = (DATA_TYPE)(i * (j + 2) % nk) / nk;
}

static void kernel_2mm(int ni, int nj, int nk, int nl, DATA_TYPE alpha, DATA_TYPE beta,
                       DATA_TYPE tmp[NI][NJ], DATA_TYPE A[NI][NK], DATA_TYPE B[NK][NJ],
                       DATA_TYPE C[NJ][NL], DATA_TYPE D[NI][NL]) {
    for (int i = 0; i < ni; i++)
        for (int j = 0; j < nj; j++) {
            tmp[i][j] = SCALAR_VAL(0.0);
            for (int k = 0; k < nk; ++k) tmp[i][j] += alpha * A[i][k] * B[k][j];
        }
    for (int i = 0; i < ni; i++)
        for (int j = 0; j < nl; j++) {
            D[i][j] *= beta;
            for (int k = 0; k < nj; ++k) D[i][j] += tmp[i][k] * C[k][j];
        }
}

int main(void) {
    DATA_TYPE alpha, beta;
    DATA_TYPE(*tmp)[NJ] = pb_alloc((size_t)NI * NJ, sizeof(DATA_TYPE));
    DATA_TYPE(*A)[NK] = pb_alloc((size_t)NI * NK, sizeof(DATA_TYPE));
    DATA_TYPE(*B)[NJ] = pb_alloc((size_t)NK * NJ, sizeof(DATA_TYPE));
    DATA_TYPE(*C)[NL] = pb_alloc((size_t)NJ * NL, sizeof(DATA_TYPE));
    DATA_TYPE(*D)[NL] = pb_alloc((size_t)NI * NL, sizeof(DATA_TYPE));
    init_array(NI, NJ, NK, NL, &alpha, &beta, A, B, C, D);
    PB_START();
    kernel_2mm(NI, NJ, NK, NL, alpha, beta, tmp, A, B, C, D);
    PB_STOP();
    pb_checksum(D, sizeof(DATA_TYPE) * NI * NL);
    pb_report();
    free(tmp);
    free(A);
    free(B);
    free(C);
    free(D);
    return 0;
}
