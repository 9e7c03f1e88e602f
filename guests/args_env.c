// Prints its arguments and its whole environment, then exits with the code given by
// the environment variable EXIT_CODE (default 0).
#include <stdio.h>
#include <stdlib.h>

extern char **environ;

int main(int argc, char **argv) {
    printf("argc=%d\n", argc);
    for (int i = 0; i < argc; i++) printf("argv[%d]=%s\n", i, argv[i]);
    int n = 0;
    for (char **e = environ; *e; e++, n++) printf("env: %s\n", *e);
    printf("envc=%d\n", n);
    const char *code = getenv("EXIT_CODE");
    return code ? atoi(code) : 0;
}
