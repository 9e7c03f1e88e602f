// An edge aggregator for Tern's continuum demo: reads calibration offsets from
// /data/calibration.csv (seeded at deploy), then for TICKS ticks takes one
// reading per sensor (simulated, deterministic), keeps a rolling mean over the last
// WINDOW ticks, appends one line per tick to /data/agg.csv through a file it keeps open,
// and prints a summary every 10 ticks. A run moved between nodes, or restored from a
// checkpoint, prints and writes exactly what an uninterrupted run does.
// Usage: sensor-agg --window N --ticks N
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SENSORS 4
#define MAX_WINDOW 512

static unsigned long long spin(unsigned long long x, unsigned long long n) {
    for (unsigned long long i = 0; i < n; i++)
        x = x * 6364136223846793005ULL + (x >> 17) + i;
    return x;
}

int main(int argc, char **argv) {
    int window = 60, ticks = 300;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--window")) window = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--ticks")) ticks = atoi(argv[i + 1]);
    }
    if (window < 1 || window > MAX_WINDOW || ticks < 1) {
        fprintf(stderr, "sensor-agg: --window 1..%d, --ticks >= 1\n", MAX_WINDOW);
        return 2;
    }
    double offset[SENSORS] = {0};
    FILE *cal = fopen("/data/calibration.csv", "r");
    if (cal) {
        char line[128];
        int s;
        double o;
        while (fgets(line, sizeof line, cal))
            if (sscanf(line, "%d,%lf", &s, &o) == 2 && s >= 0 && s < SENSORS) offset[s] = o;
        fclose(cal);
    } else {
        fprintf(stderr, "sensor-agg: no calibration file; offsets are 0\n");
    }
    FILE *out = fopen("/data/agg.csv", "w");
    if (!out) { perror("sensor-agg: /data/agg.csv"); return 1; }
    fprintf(out, "tick,mean0,mean1,mean2,mean3\n");
    static double history[MAX_WINDOW][SENSORS];
    double sum[SENSORS] = {0};
    unsigned long long x = 88172645463325252ULL;
    for (int t = 0; t < ticks; t++) {
        x = spin(x, 6000000);
        int slot = t % window;
        for (int s = 0; s < SENSORS; s++) {
            double reading = 20.0 + s + (double)((x >> (s * 8)) & 0xff) / 64.0 + offset[s];
            if (t >= window) sum[s] -= history[slot][s];
            history[slot][s] = reading;
            sum[s] += reading;
        }
        int n = t + 1 < window ? t + 1 : window;
        fprintf(out, "%d", t);
        for (int s = 0; s < SENSORS; s++) fprintf(out, ",%.3f", sum[s] / n);
        fprintf(out, "\n");
        fflush(out);
        if (t % 10 == 9) {
            printf("tick %d: mean of the last %d readings %.3f %.3f %.3f %.3f\n", t + 1, n,
                   sum[0] / n, sum[1] / n, sum[2] / n, sum[3] / n);
            fflush(stdout);
        }
    }
    fclose(out);
    printf("done: %d ticks aggregated\n", ticks);
    return 0;
}
