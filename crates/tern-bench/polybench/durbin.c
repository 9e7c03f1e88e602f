// PolyBench/C 4.2.1 durbin: Levinson-Durbin recursion solving a Toeplitz system (Yule-Walker).
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

static void init_array(int n, DATA_TYPE r[N]) {
    for (int i = 0; i < n; i++) r[i] = (n + 1 - i);
}

static void kernel_durbin(int n, DATA_TYPE r[N], DATA_TYPE y[N]) {
    DATA_TYPE z[N];
    DATA_TYPE alpha;
    DATA_TYPE beta;
    DATA_TYPE sum;

    y[0] = -r[0];
    beta = SCALAR_VAL(1.0);
    alpha = -r[0];

    for (int k = 1; k < n; k++) {
        beta = (1 - alpha * alpha) * beta;
        sum = SCALAR_VAL(0.0);
        for (int i = 0; i < k; i++) sum += r[k - i - 1] * y[i];
        alpha = -(r[k] + sum) / beta;

        for (int i = 0; i < k; i++) z[i] = y[i] + alpha * y[k - i - 1];
        for (int i = 0; i < k; i++) y[i] = z[i];
        y[k] = alpha;
    }
}

int main(void) {
    DATA_TYPE *r = pb_alloc(N, sizeof(DATA_TYPE));
    DATA_TYPE *y = pb_alloc(N, sizeof(DATA_TYPE));
    init_array(N, r);
    PB_START();
    kernel_durbin(N, r, y);
    PB_STOP();
    pb_checksum(y, sizeof(DATA_TYPE) * N);
    pb_report();
    free(r);
    free(y);
    return 0;
}
