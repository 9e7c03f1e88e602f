// Says on stderr that it waits, then reads stdin to its end: a guest blocked in a host
// call, where no safe point comes until input does.
#include <stdio.h>

int main(void) {
    fprintf(stderr, "waiting for input\n");
    long n = 0;
    while (getchar() != EOF) n++;
    printf("%ld bytes\n", n);
    return 0;
}
