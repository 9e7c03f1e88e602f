// PolyBench/C 4.2.1 floyd-warshall: all-pairs shortest paths over an N-node weighted graph.
#define DATA_TYPE_IS_INT
#include "polybench.h"

#if defined(MINI_DATASET)
#define N 60
#elif defined(SMALL_DATASET)
#define N 180
#elif defined(MEDIUM_DATASET)
#define N 500
#elif defined(LARGE_DATASET)
#define N 2800
#else
#define N 5600
#endif

static void init_array(int n, DATA_TYPE path[N][N]) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            path[i][j] = i * j % 7 + 1;
            if ((i + j) % 13 == 0 || (i + j) % 7 == 0 || (i + j) % 11 == 0) path[i][j] = 999;
        }
}

static void kernel_floyd_warshall(int n, DATA_TYPE path[N][N]) {
    for (int k = 0; k < n; k++)
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
                path[i][j] = path[i][j] < path[i][k] + path[k][j] ? path[i][j]
                                                                  : path[i][k] + path[k][j];
}

int main(void) {
    DATA_TYPE(*path)[N] = pb_alloc((size_t)N * N, sizeof(DATA_TYPE));
    init_array(N, path);
    PB_START();
    kernel_floyd_warshall(N, path);
    PB_STOP();
    pb_checksum(path, sizeof(DATA_TYPE) * N * N);
    pb_report();
    free(path);
    return 0;
}
