// Hostile: allocates and touches 1 MiB blocks until allocation fails, then reports how
// far it got. Under a memory limit Tern stops it at the first growth past the limit.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Blocks are chained through their first word so the compiler cannot elide them.
static void *volatile head;

int main(void) {
    size_t mib = 0;
    for (;;) {
        void **p = malloc(1 << 20);
        if (!p) break;
        memset(p, 0xab, 1 << 20);
        *p = head;
        head = p;
        mib++;
    }
    printf("allocation failed after %zu MiB\n", mib);
    return 0;
}
