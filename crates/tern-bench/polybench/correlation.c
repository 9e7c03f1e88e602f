// PolyBench/C 4.2.1 correlation: correlation matrix of N data points with M attributes.
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
        for (int j = 0; j < m; j++) data[i][j] = (DATA_TYPE)(i * j) / m + i;
}

static void kernel_correlation(int m, int n, DATA_TYPE float_n, DATA_TYPE data[N][M],
                               DATA_TYPE corr[M][M], DATA_TYPE mean[M], DATA_TYPE stddev[M]) {
    DATA_TYPE eps = SCALAR_VAL(0.1);

    for (int j = 0; j < m; j++) {
        mean[j] = SCALAR_VAL(0.0);
        for (int i = 0; i < n; i++) mean[j] += data[i][j];
        mean[j] /= float_n;
    }

    for (int j = 0; j < m; j++) {
        stddev[j] = SCALAR_VAL(0.0);
        for (int i = 0; i < n; i++) stddev[j] += (data[i][j] - mean[j]) * (data[i][j] - mean[j]);
        stddev[j] /= float_n;
        stddev[j] = SQRT_FUN(stddev[j]);
        // The usual inelegant way to handle near-zero standard deviations, which would
        // otherwise divide by zero below.
        stddev[j] = stddev[j] <= eps ? SCALAR_VAL(1.0) : stddev[j];
    }

    // Center and reduce the column vectors.
    for (int i = 0; i < n; i++)
        for (int j = 0; j < m; j++) {
            data[i][j] -= mean[j];
            data[i][j] /= SQRT_FUN(float_n) * stddev[j];
        }

    // The m * m correlation matrix.
    for (int i = 0; i < m - 1; i++) {
        corr[i][i] = SCALAR_VAL(1.0);
        for (int j = i + 1; j < m; j++) {
            corr[i][j] = SCALAR_VAL(0.0);
            for (int k = 0; k < n; k++) corr[i][j] += (data[k][i] * data[k][j]);
            corr[j][i] = corr[i][j];
        }
    }
    corr[m - 1][m - 1] = SCALAR_VAL(1.0);
}

int main(void) {
    DATA_TYPE float_n;
    DATA_TYPE(*data)[M] = pb_alloc((size_t)N * M, sizeof(DATA_TYPE));
    DATA_TYPE(*corr)[M] = pb_alloc((size_t)M * M, sizeof(DATA_TYPE));
    DATA_TYPE *mean = pb_alloc(M, sizeof(DATA_TYPE));
    DATA_TYPE *stddev = pb_alloc(M, sizeof(DATA_TYPE));
    init_array(M, N, &float_n, data);
    PB_START();
    kernel_correlation(M, N, float_n, data, corr, mean, stddev);
    PB_STOP();
    pb_checksum(corr, sizeof(DATA_TYPE) * M * M);
    pb_report();
    free(data);
    free(corr);
    free(mean);
    free(stddev);
    return 0;
}
