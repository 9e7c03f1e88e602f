// PolyBench/C 4.2.1 covariance: covariance matrix of N data points with M attributes.
#include "polybench.h"

#if defined(MINI_DATASET)
#define M 28
#define N 32
#elif defined(SMALL_DATASET)
#define M 80
#define N 100
#elif defined(MEDIUM_DATASET)
#define M 240
#define N 260
#elif defined(LARGE_DATASET)
#define M 1200
#define N 1400
#else
#define M 2600
#define N 3000
#endif

static void init_array(int m, int n, DATA_TYPE *float_n, DATA_TYPE data[N][M]) {
    *float_n = (DATA_TYPE)n;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < m; j++) data[i][j] = ((DATA_TYPE)i * j) / m;
}

static void kernel_covariance(int m, int n, DATA_TYPE float_n, DATA_TYPE data[N][M],
                              DATA_TYPE cov[M][M], DATA_TYPE mean[M]) {
    for (int j = 0; j < m; j++) {
        mean[j] = SCALAR_VAL(0.0);
        for (int i = 0; i < n; i++) mean[j] += data[i][j];
        mean[j] /= float_n;
    }

    for (int i = 0; i < n; i++)
        for (int j = 0; j < m; j++) data[i][j] -= mean[j];

    for (int i = 0; i < m; i++)
        for (int j = i; j < m; j++) {
            cov[i][j] = SCALAR_VAL(0.0);
            for (int k = 0; k < n; k++) cov[i][j] += data[k][i] * data[k][j];
            cov[i][j] /= (float_n - SCALAR_VAL(1.0));
            cov[j][i] = cov[i][j];
        }
}

int main(void) {
    DATA_TYPE float_n;
    DATA_TYPE(*data)[M] = pb_alloc((size_t)N * M, sizeof(DATA_TYPE));
    DATA_TYPE(*cov)[M] = pb_alloc((size_t)M * M, sizeof(DATA_TYPE));
    DATA_TYPE *mean = pb_alloc(M, sizeof(DATA_TYPE));
    init_array(M, N, &float_n, data);
    PB_START();
    kernel_covariance(M, N, float_n, data, cov, mean);
    PB_STOP();
    pb_checksum(cov, sizeof(DATA_TYPE) * M * M);
    pb_report();
    free(data);
    free(cov);
    free(mean);
    return 0;
}
