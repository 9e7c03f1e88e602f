// A quiet, long-lived app: prints "tick I" every MS milliseconds, COUNT times, and
// exits 0. It sleeps between ticks, so many of them share a machine's cores, and its
// output does not depend on timing: a run moved or restored any number of times prints
// exactly what an uninterrupted run prints. Arguments: COUNT MS.
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
    int count = argc > 1 ? atoi(argv[1]) : 10;
    long ms = argc > 2 ? atol(argv[2]) : 100;
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    for (int i = 1; i <= count; i++) {
        nanosleep(&t, NULL);
        printf("tick %d\n", i);
        fflush(stdout);
    }
    return 0;
}
