// Reads stdin line by line, working a while on each (the busy loop stands in for
// real processing), and prints each line with its checksum: a guest still reading its
// input long after it started.
#include <stdio.h>

int main(void) {
    char line[256];
    unsigned long n = 0;
    while (fgets(line, sizeof line, stdin)) {
        unsigned long h = 5381;
        for (int round = 0; round < 20000; round++)
            for (const char *p = line; *p; p++) h = h * 33 + (unsigned char)*p + round;
        printf("%lu %08lx %s", ++n, h & 0xffffffff, line);
    }
    fprintf(stderr, "%lu lines\n", n);
    return 0;
}
