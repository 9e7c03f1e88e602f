// Hostile: recurses without end (not a tail call, so every level keeps a frame).
#include <stdio.h>

// The recursive call goes through a volatile function pointer so the compiler can
// neither turn it into a loop nor prove it endless.
static unsigned long deep(unsigned long n);
static unsigned long (*volatile next)(unsigned long) = deep;

static unsigned long deep(unsigned long n) {
    return next(n + 1) + n;
}

int main(void) {
    printf("%lu\n", deep(0));
    return 0;
}
