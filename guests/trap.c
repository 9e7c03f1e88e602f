// Traps in a named function two calls deep, so the backtrace has names to show.
#include <stdio.h>

__attribute__((noinline)) void check_invariant(int x) {
    if (x != 42) __builtin_trap();
}

__attribute__((noinline)) void process_order(int x) {
    check_invariant(x);
    puts("unreachable");
}

int main(int argc, char **argv) {
    (void)argv;
    puts("about to trap");
    fflush(stdout);
    process_order(argc);
    return 0;
}
