// Reads `input.txt` from the directory given as argv[1], then tries to write there.
// Under --ro-dir the read succeeds and each write fails with a WASI error the guest sees.
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    char p[512];
    snprintf(p, sizeof p, "%s/input.txt", argv[1]);
    FILE *f = fopen(p, "r");
    char line[128] = {0};
    if (f && fgets(line, sizeof line, f)) printf("read: %s", line);
    else printf("read failed: %s\n", strerror(errno));
    if (f) fclose(f);

    snprintf(p, sizeof p, "%s/new.txt", argv[1]);
    int fd = open(p, O_WRONLY | O_CREAT, 0644);
    printf("create: %s\n", fd < 0 ? strerror(errno) : "allowed");
    snprintf(p, sizeof p, "%s/input.txt", argv[1]);
    fd = open(p, O_WRONLY | O_APPEND);
    printf("append: %s\n", fd < 0 ? strerror(errno) : "allowed");
    printf("unlink: %s\n", unlink(p) != 0 ? strerror(errno) : "allowed");
    snprintf(p, sizeof p, "%s/newdir", argv[1]);
    printf("mkdir: %s\n", mkdir(p, 0755) != 0 ? strerror(errno) : "allowed");
    return 0;
}
