// PolyBench/C 4.2.1 nussinov: RNA folding (maximum base pairing) by dynamic programming.
#define DATA_TYPE_IS_INT
#include "polybench.h"

#if defined(MINI_DATASET)
#define N 60
#elif defined(SMALL_DATASET)
#define N 180
#elif defined(MEDIUM_DATASET)
#define N 500
#elif defined(LARGE_DATASET)
#define N 2500
#else
#define N 5500
#endif

// RNA bases represented as chars, range is [0,3].
typedef char base;

#define match(b1, b2) (((b1) + (b2)) == 3 ? 1 : 0)
#define max_score(s1, s2) ((s1 >= s2) ? s1 : s2)

static void init_array(int n, base seq[N], DATA_TYPE table[N][N]) {
    // base is AGCT/0..3
    for (int i = 0; i < n; i++) seq[i] = (base)((i + 1) % 4);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) table[i][j] = 0;
}

static void kernel_nussinov(int n, base seq[N], DATA_TYPE table[N][N]) {
    for (int i = n - 1; i >= 0; i--) {
        for (int j = i + 1; j < n; j++) {
            if (j - 1 >= 0) table[i][j] = max_score(table[i][j], table[i][j - 1]);
            if (i + 1 < n) table[i][j] = max_score(table[i][j], table[i + 1][j]);
            if (j - 1 >= 0 && i + 1 < n) {
                // don't allow adjacent elements to bond
                if (i < j - 1)
                    table[i][j] =
                        max_score(table[i][j], table[i + 1][j - 1] + match(seq[i], seq[j]));
                else
                    table[i][j] = max_score(table[i][j], table[i + 1][j - 1]);
            }
            for (int k = i + 1; k < j; k++)
                table[i][j] = max_score(table[i][j], table[i][k] + table[k + 1][j]);
        }
    }
}

int main(void) {
    base *seq = pb_alloc(N, sizeof(base));
    DATA_TYPE(*table)[N] = pb_alloc((size_t)N * N, sizeof(DATA_TYPE));
    init_array(N, seq, table);
    PB_START();
    kernel_nussinov(N, seq, table);
    PB_STOP();
    // PolyBench dumps only the upper triangle (j >= i), row by row.
    for (int i = 0; i < N; i++) pb_checksum(&table[i][i], sizeof(DATA_TYPE) * (N - i));
    pb_report();
    free(seq);
    free(table);
    return 0;
}
