// graph: single-source shortest paths and BFS on a pseudo-random sparse directed graph.
// The graph has N = 2^18 vertices and about 1M edges in CSR form (row offsets, column
// indices, int weights 1..100); each vertex u has 1..5 random out-edges plus u -> u+1,
// so every vertex is reachable from vertex 0. For each of NSRC sources the kernel runs
// Bellman-Ford by repeated push-style relaxation over all edges until no distance
// changes, then a BFS with an explicit queue for hop counts. Integer arithmetic only.
// The checksum covers, per source, the distance and hop-count arrays' folded sums and
// the number of relaxation passes, then the last source's full distance array.
#include "polybench.h"

// MINI_DATASET is a quick correctness check; any other size runs the full problem.
#if defined(MINI_DATASET)
#define NV (1 << 10)
#define NSRC 2
#else
#define NV (1 << 18)
#define NSRC 20
#endif
#define INF 0x3fffffff

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static inline uint64_t xorshift64(void) {
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

// Push-style Bellman-Ford; returns the number of passes over the edges.
static int bellman_ford(const int *row, const int *col, const int *w, int *dist, int src) {
    for (int i = 0; i < NV; i++) dist[i] = INF;
    dist[src] = 0;
    int passes = 0, changed = 1;
    while (changed) {
        changed = 0;
        passes++;
        for (int u = 0; u < NV; u++) {
            int du = dist[u];
            if (du == INF) continue;
            for (int e = row[u]; e < row[u + 1]; e++) {
                int v = col[e];
                int nd = du + w[e];
                if (nd < dist[v]) {
                    dist[v] = nd;
                    changed = 1;
                }
            }
        }
    }
    return passes;
}

static void bfs(const int *row, const int *col, int *level, int *queue, int src) {
    for (int i = 0; i < NV; i++) level[i] = -1;
    int head = 0, tail = 0;
    level[src] = 0;
    queue[tail++] = src;
    while (head < tail) {
        int u = queue[head++];
        int lu = level[u] + 1;
        for (int e = row[u]; e < row[u + 1]; e++) {
            int v = col[e];
            if (level[v] < 0) {
                level[v] = lu;
                queue[tail++] = v;
            }
        }
    }
}

int main(void) {
    int *row = pb_alloc(NV + 1, sizeof(int));
    int *col = pb_alloc((size_t)NV * 8, sizeof(int));
    int *w = pb_alloc((size_t)NV * 8, sizeof(int));
    int *dist = pb_alloc(NV, sizeof(int));
    int *level = pb_alloc(NV, sizeof(int));
    int *queue = pb_alloc(NV, sizeof(int));
    int m = 0;
    for (int u = 0; u < NV; u++) {
        row[u] = m;
        int deg = 1 + (int)(xorshift64() % 5);
        for (int k = 0; k < deg; k++) {
            col[m] = (int)(xorshift64() % NV);
            w[m] = 1 + (int)(xorshift64() % 100);
            m++;
        }
        col[m] = (u + 1) % NV;
        w[m] = 50 + (int)(xorshift64() % 50);
        m++;
    }
    row[NV] = m;

    uint64_t results[NSRC][3];
    PB_START();
    for (int s = 0; s < NSRC; s++) {
        int src = (int)(((uint64_t)s * 2654435761u) % NV);
        int passes = bellman_ford(row, col, w, dist, src);
        bfs(row, col, level, queue, src);
        uint64_t sd = 0, sl = 0;
        for (int i = 0; i < NV; i++) {
            sd = sd * 31 + (uint64_t)dist[i];
            sl = sl * 37 + (uint64_t)level[i];
        }
        results[s][0] = sd;
        results[s][1] = sl;
        results[s][2] = (uint64_t)passes;
    }
    PB_STOP();
    pb_checksum(results, sizeof results);
    pb_checksum(dist, sizeof(int) * NV);
    pb_report();
    free(row); free(col); free(w); free(dist); free(level); free(queue);
    return 0;
}
