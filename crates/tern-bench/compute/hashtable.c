// hashtable: an open-addressing hash table of uint64 keys -> uint64 values with linear
// probing and backward-shift deletion (no tombstones). The table starts at 16 slots and
// doubles by rehashing into a fresh calloc'd array (the old one is freed) whenever it
// would pass 1/2 load. A xorshift64 RNG drives NOPS operations: 50% insert-or-update,
// 30% lookup, 20% delete, on keys drawn from a space of KEYSPACE keys, so the table
// grows to a few million entries and lookups both hit and miss. Integer arithmetic only.
// The checksum covers the operation counters, a running fold of looked-up values, and an
// order-independent digest of the final table contents.
#include "polybench.h"

// MINI_DATASET is a quick correctness check; any other size runs the full problem.
#if defined(MINI_DATASET)
#define NOPS 200000
#define KEYSPACE (1u << 14)
#else
#define NOPS 24000000
#define KEYSPACE (1u << 23)
#endif
#define EMPTY 0 // key 0 is never stored: keys are made odd-or-nonzero below

typedef struct {
    uint64_t *keys;
    uint64_t *vals;
    uint64_t mask;  // capacity - 1
    uint64_t count;
} table;

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;
static inline uint64_t xorshift64(void) {
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static inline uint64_t hash64(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ull;
    k ^= k >> 33;
    return k;
}

static void table_init(table *t, uint64_t cap) {
    t->keys = calloc(cap, sizeof(uint64_t));
    t->vals = calloc(cap, sizeof(uint64_t));
    if (!t->keys || !t->vals) { fprintf(stderr, "out of memory\n"); exit(1); }
    t->mask = cap - 1;
    t->count = 0;
}

static void table_grow(table *t) {
    uint64_t *ok = t->keys, *ov = t->vals;
    uint64_t ocap = t->mask + 1;
    table_init(t, ocap * 2);
    for (uint64_t i = 0; i < ocap; i++) {
        uint64_t k = ok[i];
        if (k == EMPTY) continue;
        uint64_t j = hash64(k) & t->mask;
        while (t->keys[j] != EMPTY) j = (j + 1) & t->mask;
        t->keys[j] = k;
        t->vals[j] = ov[i];
        t->count++;
    }
    free(ok);
    free(ov);
}

// Returns 1 if the key was new.
static int table_put(table *t, uint64_t k, uint64_t v) {
    if ((t->count + 1) * 2 > t->mask + 1) table_grow(t);
    uint64_t j = hash64(k) & t->mask;
    for (;;) {
        uint64_t kk = t->keys[j];
        if (kk == k) { t->vals[j] = v; return 0; }
        if (kk == EMPTY) { t->keys[j] = k; t->vals[j] = v; t->count++; return 1; }
        j = (j + 1) & t->mask;
    }
}

static int table_get(const table *t, uint64_t k, uint64_t *v) {
    uint64_t j = hash64(k) & t->mask;
    for (;;) {
        uint64_t kk = t->keys[j];
        if (kk == k) { *v = t->vals[j]; return 1; }
        if (kk == EMPTY) return 0;
        j = (j + 1) & t->mask;
    }
}

static int table_del(table *t, uint64_t k) {
    uint64_t j = hash64(k) & t->mask;
    for (;;) {
        uint64_t kk = t->keys[j];
        if (kk == EMPTY) return 0;
        if (kk == k) break;
        j = (j + 1) & t->mask;
    }
    // Backward-shift deletion: pull later members of the cluster into the hole.
    uint64_t hole = j;
    uint64_t i = (j + 1) & t->mask;
    for (;;) {
        uint64_t kk = t->keys[i];
        if (kk == EMPTY) break;
        uint64_t home = hash64(kk) & t->mask;
        // Move kk if its home is not cyclically within (hole, i].
        if (((i - home) & t->mask) >= ((i - hole) & t->mask)) {
            t->keys[hole] = kk;
            t->vals[hole] = t->vals[i];
            hole = i;
        }
        i = (i + 1) & t->mask;
    }
    t->keys[hole] = EMPTY;
    t->vals[hole] = 0;
    t->count--;
    return 1;
}

int main(void) {
    table t;
    table_init(&t, 16);
    uint64_t stats[8] = {0};
    PB_START();
    for (uint32_t n = 0; n < NOPS; n++) {
        uint64_t r = xorshift64();
        uint64_t key = ((r >> 8) % KEYSPACE) * 0x9E3779B97F4A7C15ull | 1; // nonzero
        uint32_t op = (uint32_t)(r & 0xff) % 10;
        if (op < 5) {
            stats[0] += (uint64_t)table_put(&t, key, r ^ n);
        } else if (op < 8) {
            uint64_t v;
            if (table_get(&t, key, &v)) { stats[1]++; stats[2] = stats[2] * 1099511628211ull ^ v; }
            else stats[3]++;
        } else {
            stats[4] += (uint64_t)table_del(&t, key);
        }
    }
    PB_STOP();
    // Order-independent digest of the final contents.
    uint64_t sum = 0, x = 0;
    for (uint64_t i = 0; i <= t.mask; i++) {
        if (t.keys[i] == EMPTY) continue;
        uint64_t h = hash64(t.keys[i] ^ hash64(t.vals[i]));
        sum += h;
        x ^= h;
    }
    stats[5] = t.count;
    stats[6] = sum;
    stats[7] = x;
    pb_checksum(stats, sizeof stats);
    pb_report();
    free(t.keys);
    free(t.vals);
    return 0;
}
