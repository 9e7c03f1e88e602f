// A long computation in steps, for checkpoint tests: each step spins in a loop that
// never calls the host, keeps state on the heap and on the stack, and prints one line.
// A run stopped at any point and restored must print exactly what an uninterrupted run
// prints, and exit with the same code (3).
#include <stdio.h>
#include <stdlib.h>

static unsigned long long spin(unsigned long long x, unsigned long long n) {
    for (unsigned long long i = 0; i < n; i++)
        x = x * 6364136223846793005ULL + (x >> 17) + i;
    return x;
}

int main(int argc, char **argv) {
    int steps = argc > 1 ? atoi(argv[1]) : 20;
    unsigned long long work = argc > 2 ? strtoull(argv[2], 0, 10) : 20000000ULL;
    unsigned long long *history = calloc((size_t)steps + 1, sizeof *history);
    unsigned long long acc = 1;
    for (int i = 0; i < steps; i++) {
        acc = spin(acc, work);
        history[i] = acc;
        printf("step %d %016llx\n", i, acc);
        fflush(stdout);
    }
    unsigned long long sum = 0;
    for (int i = 0; i < steps; i++) sum += history[i] * (unsigned long long)(i + 1);
    printf("done %016llx\n", sum);
    return 3;
}
