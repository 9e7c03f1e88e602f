// Writes "y" lines for ever and ignores every error, as `yes` would without SIGPIPE:
// only its host can end it once its reader has gone.
#include <stdio.h>

int main(void) {
    for (;;) {
        fputs("y\n", stdout);
    }
}
