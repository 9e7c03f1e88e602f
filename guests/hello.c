// Prints a greeting: the smallest WASI command, used by the demo and the start-up benchmark.
#include <stdio.h>

int main(void) {
    puts("hello from WebAssembly");
    return 0;
}
