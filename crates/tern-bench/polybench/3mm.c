// PolyBench/C 4.2.1 3mm: G := (A*B)*(C*D), three matrix multiplications.
#include "polybench.h"

#if defined(MINI_DATASET)
#define NI 16
#define NJ 18
#define NK 20
#define NL 22
#define NM 24
#elif defined(SMALL_DATASET)
#define NI 40
#define NJ 50
#define NK 60
#define NL 70
#define NM 80
#elif defined(MEDIUM_DATASET)
#define NI 180
#define NJ 190
#define NK 200
#define NL 210
#define NM 220
#elif defined(LARGE_DATASET)
#define NI 800
#define NJ 900
#define NK 1000
#define NL 1100
#define NM 1200
#else
#define NI 1600
#define NJ 1800
#define NK 2000
#define NL 2200
#define NM 2400
#endif

static void init_array(int ni, int nj, int nk, int nl, int nm, DATA_TYPE A[NI][NK],
                       DATA_TYPE B[NK][NJ], DATA_TYPE C[NJ][NM], DATA_TYPE D[NM][NL]) {
    for (int i = 0; i < ni; i++)
        for (int j = 0; j < nk; j++) A[i][j] = (DATA_TYPE)((i * j + 1) % ni) / (5 * ni);
    for (int i = 0; i < nk; i++)
        for (int j = 0; j < nj; j++) B[i][j] = (DATA_TYPE)((i * (j + 1) + 2) % nj) / (5 * nj);
    for (int i = 0; i < nj; i++)
        for (int j = 0; j < nm; j++) C[i][j] = (DATA_TYPE)(i * (j + 3) % nl) / (5 * nl);
    for (int i = 0; i < nm; i++)
        for (int j = 0; j < nl; j++) D[i][j] = (DATA_TYPE)((i * (j + 2) + 2) % nk) / (5 * nk);
}

static void kernel_3mm(int ni, int nj, int nk, int nl, int nm, DATA_TYPE E[NI][NJ],
                       DATA_TYPE A[NI][NK], DATA_TYPE B[NK][NJ], DATA_TYPE F[NJ][NL],
                       DATA_TYPE C[NJ][NM], DATA_TYPE D[NM][NL], DATA_TYPE G[NI][NL]) {
    // E := A*B
    for (int i = 0; i < ni; i++)
        for (int j = 0; j < nj; j++) {
            E[i][j] = SCALAR_VAL(0.0);
            for (int k = 0; k < nk; ++k) E[i][j] += A[i][k] * B[k][j];
        }
    // F := C*D
    for (int i = 0; i < nj; i++)
        for (int j = 0; j < nl; j++) {
            F[i][j] = SCALAR_VAL(0.0);
            for (int k = 0; k < nm; ++k) F[i][j] += C[i][k] * D[k][j];
        }
    // G := E*F
    for (int i = 0; i < ni; i++)
        for (int j = 0; j < nl; j++) {
            G[i][j] = SCALAR_VAL(0.0);
            for (int k = 0; k < nj; ++k) G[i][j] += E[i][k] * F[k][j];
        }
}

int main(void) {
    DATA_TYPE(*E)[NJ] = pb_alloc((size_t)NI * NJ, sizeof(DATA_TYPE));
    DATA_TYPE(*A)[NK] = pb_alloc((size_t)NI * NK, sizeof(DATA_TYPE));
    DATA_TYPE(*B)[NJ] = pb_alloc((size_t)NK * NJ, sizeof(DATA_TYPE));
    DATA_TYPE(*F)[NL] = pb_alloc((size_t)NJ * NL, sizeof(DATA_TYPE));
    DATA_TYPE(*C)[NM] = pb_alloc((size_t)NJ * NM, sizeof(DATA_TYPE));
    DATA_TYPE(*D)[NL] = pb_alloc((size_t)NM * NL, sizeof(DATA_TYPE));
    DATA_TYPE(*G)[NL] = pb_alloc((size_t)NI * NL, sizeof(DATA_TYPE));
    init_array(NI, NJ, NK, NL, NM, A, B, C, D);
    PB_START();
    kernel_3mm(NI, NJ, NK, NL, NM, E, A, B, F, C, D, G);
    PB_STOP();
    pb_checksum(G, sizeof(DATA_TYPE) * NI * NL);
    pb_report();
    free(E);
    free(A);
    free(B);
    free(F);
    free(C);
    free(D);
    free(G);
    return 0;
}
