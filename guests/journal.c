// Keeps files open across a checkpoint: appends numbered records to DIR/journal.txt
// through one descriptor that stays open for the whole run, reads them back through a
// second descriptor that stays open at its offset, and checks that the monotonic clock
// never goes backwards. Arguments: DIR RECORDS WORK.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static unsigned long long spin(unsigned long long x, unsigned long long n) {
    for (unsigned long long i = 0; i < n; i++)
        x = x * 6364136223846793005ULL + (x >> 17) + i;
    return x;
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: journal DIR RECORDS WORK\n"); return 2; }
    char path[256];
    snprintf(path, sizeof path, "%s/journal.txt", argv[1]);
    int records = atoi(argv[2]);
    unsigned long long work = strtoull(argv[3], 0, 10);
    FILE *w = fopen(path, "w");
    FILE *r = fopen(path, "r");
    if (!w || !r) { perror("open"); return 1; }
    long long last = now_ns();
    unsigned long long acc = 1, sum = 0;
    char line[128];
    for (int i = 0; i < records; i++) {
        acc = spin(acc, work);
        fprintf(w, "record %d %016llx\n", i, acc);
        fflush(w);
        if (!fgets(line, sizeof line, r)) { printf("read failed at %d\n", i); return 1; }
        unsigned long long v = 0;
        int n = -1;
        if (sscanf(line, "record %d %llx", &n, &v) != 2 || n != i || v != acc) {
            printf("mismatch at %d: %s", i, line);
            return 1;
        }
        sum += v;
        long long t = now_ns();
        if (t < last) { printf("clock went back at %d\n", i); return 1; }
        last = t;
        printf("record %d ok\n", i);
        fflush(stdout);
    }
    fclose(w);
    fclose(r);
    printf("journal %d records, sum %016llx\n", records, sum);
    return 0;
}
