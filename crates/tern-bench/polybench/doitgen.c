// PolyBench/C 4.2.1 doitgen: multi-resolution analysis kernel, A[r][q][*] := A[r][q][*] * C4.
#include "polybench.h"

#if defined(MINI_DATASET)
#define NQ 8
#define NR 10
#define NP 12
#elif defined(SMALL_DATASET)
#define NQ 20
#define NR 25
#define NP 30
#elif defined(MEDIUM_DATASET)
#define NQ 40
#define NR 50
#define NP 60
#elif defined(LARGE_DATASET)
#define NQ 140
#define NR 150
#define NP 160
#else
#define NQ 220
#define NR 250
#define NP 270
#endif

static void init_array(int nr, int nq, int np, DATA_TYPE A[NR][NQ][NP], DATA_TYPE C4[NP][NP]) {
    for (int i = 0; i < nr; i++)
        for (int j = 0; j < nq; j++)
            for (int k = 0; k < np; k++) A[i][j][k] = (DATA_TYPE)((i * j + k) % np) / np;
    for (int i = 0; i < np; i++)
        for (int j = 0; j < np; j++) C4[i][j] = (DATA_TYPE)(i * j % np) / np;
}

static void kernel_doitgen(int nr, int nq, int np, DATA_TYPE A[NR][NQ][NP], DATA_TYPE C4[NP][NP],
                           DATA_TYPE sum[NP]) {
    for (int r = 0; r < nr; r++)
        for (int q = 0; q < nq; q++) {
            for (int p = 0; p < np; p++) {
                sum[p] = SCALAR_VAL(0.0);
                for (int s = 0; s < np; s++) sum[p] += A[r][q][s] * C4[s][p];
            }
            for (int p = 0; p < np; p++) A[r][q][p] = sum[p];
        }
}

int main(void) {
    DATA_TYPE(*A)[NQ][NP] = pb_alloc((size_t)NR * NQ * NP, sizeof(DATA_TYPE));
    DATA_TYPE *sum = pb_alloc(NP, sizeof(DATA_TYPE));
    DATA_TYPE(*C4)[NP] = pb_alloc((size_t)NP * NP, sizeof(DATA_TYPE));
    init_array(NR, NQ, NP, A, C4);
    PB_START();
    kernel_doitgen(NR, NQ, NP, A, C4, sum);
    PB_STOP();
    pb_checksum(A, sizeof(DATA_TYPE) * NR * NQ * NP);
    pb_report();
    free(A);
    free(sum);
    free(C4);
    return 0;
}
