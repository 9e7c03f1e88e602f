// A working set for migration benchmarks: fills MiB of heap (every page non-zero), then
// for ROUNDS rounds keeps rewriting a hot quarter megabyte and, once a round, a byte
// anywhere, like a server with a large cache and a small hot set. Prints a checksum of
// the whole set at the end, so a migrated run can be checked against an uninterrupted
// one. Arguments: MIB ROUNDS.
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: workset MIB ROUNDS\n"); return 2; }
    size_t n = (size_t)atoi(argv[1]) << 20;
    unsigned long long rounds = strtoull(argv[2], 0, 10);
    unsigned char *buf = malloc(n);
    if (!buf) { fprintf(stderr, "workset: out of memory\n"); return 1; }
    for (size_t i = 0; i < n; i++) buf[i] = (unsigned char)(i * 131 + 7);
    size_t hot = n < (256 << 10) ? n : (256 << 10);
    unsigned long long x = 88172645463325252ULL;
    for (unsigned long long r = 0; r < rounds; r++) {
        for (int k = 0; k < 4096; k++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            buf[x % hot] += (unsigned char)k;
        }
        buf[x % n] += 1;
    }
    unsigned long long sum = 0;
    for (size_t i = 0; i < n; i++) sum = sum * 31 + buf[i];
    printf("workset %zu MiB: %016llx\n", n >> 20, sum);
    return 0;
}
