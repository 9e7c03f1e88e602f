// Checks clocks and randomness: realtime is after 2020, monotonic never goes back, a
// 20 ms sleep takes at least 20 ms, and getentropy fills a buffer (two draws differ).
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(clockid_t c) {
    struct timespec t;
    clock_gettime(c, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(void) {
    double wall = now(CLOCK_REALTIME);
    printf("realtime after 2020: %s\n", wall > 1577836800.0 ? "yes" : "no");
    double a = now(CLOCK_MONOTONIC);
    int back = 0;
    for (int i = 0; i < 1000; i++) {
        double b = now(CLOCK_MONOTONIC);
        if (b < a) back = 1;
        a = b;
    }
    printf("monotonic never goes back: %s\n", back ? "no" : "yes");
    double s0 = now(CLOCK_MONOTONIC);
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
    double slept = now(CLOCK_MONOTONIC) - s0;
    printf("slept at least 20ms: %s\n", slept >= 0.020 ? "yes" : "no");
    unsigned char r1[32], r2[32];
    if (getentropy(r1, sizeof r1) || getentropy(r2, sizeof r2)) { puts("getentropy failed"); return 1; }
    printf("random draws differ: %s\n", memcmp(r1, r2, sizeof r1) ? "yes" : "no");
    return 0;
}
