// PolyBench/C 4.2.1 fdtd-2d: 2-D finite-difference time-domain electromagnetic field update.
#include "polybench.h"

#if defined(MINI_DATASET)
#define TMAX 20
#define NX 20
#define NY 30
#elif defined(SMALL_DATASET)
#define TMAX 40
#define NX 60
#define NY 80
#elif defined(MEDIUM_DATASET)
#define TMAX 100
#define NX 200
#define NY 240
#elif defined(LARGE_DATASET)
#define TMAX 500
#define NX 1000
#define NY 1200
#else
#define TMAX 1000
#define NX 2000
#define NY 2600
#endif

static void init_array(int tmax, int nx, int ny, DATA_TYPE ex[NX][NY], DATA_TYPE ey[NX][NY],
                       DATA_TYPE hz[NX][NY], DATA_TYPE _fict_[TMAX]) {
    for (int i = 0; i < tmax; i++) _fict_[i] = (DATA_TYPE)i;
    for (int i = 0; i < nx; i++)
        for (int j = 0; j < ny; j++) {
            ex[i][j] = ((DATA_TYPE)i * (j + 1)) / nx;
            ey[i][j] = ((DATA_TYPE)i * (j + 2)) / ny;
            hz[i][j] = ((DATA_TYPE)i * (j + 3)) / nx;
        }
}

static void kernel_fdtd_2d(int tmax, int nx, int ny, DATA_TYPE ex[NX][NY], DATA_TYPE ey[NX][NY],
                           DATA_TYPE hz[NX][NY], DATA_TYPE _fict_[TMAX]) {
    for (int t = 0; t < tmax; t++) {
        for (int j = 0; j < ny; j++) ey[0][j] = _fict_[t];
        for (int i = 1; i < nx; i++)
            for (int j = 0; j < ny; j++)
                ey[i][j] = ey[i][j] - SCALAR_VAL(0.5) * (hz[i][j] - hz[i - 1][j]);
        for (int i = 0; i < nx; i++)
            for (int j = 1; j < ny; j++)
                ex[i][j] = ex[i][j] - SCALAR_VAL(0.5) * (hz[i][j] - hz[i][j - 1]);
        for (int i = 0; i < nx - 1; i++)
            for (int j = 0; j < ny - 1; j++)
                hz[i][j] = hz[i][j] -
                           SCALAR_VAL(0.7) * (ex[i][j + 1] - ex[i][j] + ey[i + 1][j] - ey[i][j]);
    }
}

int main(void) {
    DATA_TYPE(*ex)[NY] = pb_alloc((size_t)NX * NY, sizeof(DATA_TYPE));
    DATA_TYPE(*ey)[NY] = pb_alloc((size_t)NX * NY, sizeof(DATA_TYPE));
    DATA_TYPE(*hz)[NY] = pb_alloc((size_t)NX * NY, sizeof(DATA_TYPE));
    DATA_TYPE *_fict_ = pb_alloc(TMAX, sizeof(DATA_TYPE));
    init_array(TMAX, NX, NY, ex, ey, hz, _fict_);
    PB_START();
    kernel_fdtd_2d(TMAX, NX, NY, ex, ey, hz, _fict_);
    PB_STOP();
    pb_checksum(ex, sizeof(DATA_TYPE) * NX * NY);
    pb_checksum(ey, sizeof(DATA_TYPE) * NX * NY);
    pb_checksum(hz, sizeof(DATA_TYPE) * NX * NY);
    pb_report();
    free(ex);
    free(ey);
    free(hz);
    free(_fict_);
    return 0;
}
