// Sleeps for the milliseconds given (nanosleep, in one call) and prints how long the
// sleep took by the monotonic clock, which a restore carries on from the snapshot.
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

int main(int argc, char **argv) {
    long ms = argc > 1 ? atol(argv[1]) : 1000;
    printf("sleeping %ld ms\n", ms);
    fflush(stdout);
    long long start = now_ms();
    struct timespec d = {ms / 1000, (ms % 1000) * 1000000L};
    if (nanosleep(&d, 0) != 0) {
        perror("nanosleep");
        return 1;
    }
    printf("slept %lld ms\n", now_ms() - start);
    return 0;
}
