// Exercises libc's memcpy, memmove, memset, memcmp and strlen over many sizes, alignments and overlaps
// and prints FNV-1a hashes of the bytes each step touched, so two runs can be compared
// byte for byte. `memops oob` then copies past the end of linear memory, which traps.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t fnv(const unsigned char *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

// Opaque to the optimiser, so the calls below stay calls into libc.
__attribute__((noinline)) void *copy(void *d, const void *s, size_t n, int forward) {
    return forward ? memcpy(d, s, n) : memmove(d, s, n);
}

int main(int argc, char **argv) {
    enum { N = 1 << 19 };
    unsigned char *buf = malloc(N);
    if (!buf) return 1;
    for (size_t i = 0; i < N; i++) buf[i] = (unsigned char)(i * 2654435761u >> 13);
    uint32_t x = 12345;
    uint64_t all = 0;
    size_t last_d = 0, last_s = 0, last_n = 0;
    for (int step = 0; step < 1500; step++) {
        x = x * 1103515245u + 12345u;
        size_t sizes[] = {0, 1, 3, 8, 15, 16, 33, 255, 4096, 65536, 300000};
        size_t n = sizes[(x >> 8) % 11];
        size_t d = (x >> 4) % (N - n);
        size_t s = (step & 1) ? (d + (x % 64)) % (N - n) : (x * 7u) % (N - n);
        void *r = buf + d;
        switch (step % 4) {
            case 0:  // even steps: the source is far, but the ranges may still overlap
                r = copy(buf + d, buf + s, n, 1);
                last_d = s, last_s = d, last_n = n;
                break;
            case 1: r = copy(buf + d, buf + s, n, 0); break;
            case 2: r = memset(buf + d, (int)(x >> 16), n); break;
            default: {
                // Ranges the last copy made equal, and a little beyond, where they may
                // differ; or two unrelated ranges.
                size_t m = last_n + (x & 7);
                int c = (x & 8) && last_d + m <= N && last_s + m <= N
                            ? memcmp(buf + last_d, buf + last_s, m)
                            : memcmp(buf + d, buf + s, n);
                buf[N - 1] = 0;
                all = all * 3 + (uint64_t)(int64_t)c + strlen((const char *)buf + d);
                break;
            }
        }
        if (r != buf + d) {
            printf("step %d: wrong return value\n", step);
            return 1;
        }
        size_t lo = d < s ? d : s, hi = (d > s ? d : s) + n;
        all = (all ^ fnv(buf + lo, hi - lo)) * 31 + (uint64_t)step;
        if (step % 300 == 0) {
            all ^= fnv(buf, N);
            printf("step %d: %016llx\n", step, (unsigned long long)all);
        }
    }
    printf("final: %016llx\n", (unsigned long long)all);
    if (argc > 1 && strcmp(argv[1], "oob") == 0) {
        fflush(stdout);
        // Ends 16 bytes past the last page: the copy traps.
        size_t end = __builtin_wasm_memory_size(0) * 65536;
        copy((void *)(uintptr_t)(end - 100), buf, 116, 1);
        puts("unreachable");
    }
    free(buf);
    return 0;
}
