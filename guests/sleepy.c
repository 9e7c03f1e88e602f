// Hostile: blocks inside a host call (a one-hour sleep) and never runs Wasm code again.
#include <unistd.h>

int main(void) {
    sleep(3600);
    return 0;
}
