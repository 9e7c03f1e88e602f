// Exercises files and directories in the preopened directory given as argv[1]: create,
// write, append, seek, read back, mkdir, readdir, stat, rename, unlink. Prints one line
// per step and leaves `report.txt` and `sub/moved.txt` behind for the host to check.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char path[512];
static const char *in(const char *dir, const char *name) {
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return path;
}

static void fail(const char *what) {
    printf("FAIL %s: %s\n", what, strerror(errno));
    exit(1);
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: files DIR\n"); return 2; }
    const char *dir = argv[1];

    FILE *f = fopen(in(dir, "report.txt"), "w");
    if (!f) fail("create");
    fputs("line one\n", f);
    fclose(f);
    f = fopen(in(dir, "report.txt"), "a");
    if (!f) fail("append");
    fputs("line two\n", f);
    fclose(f);
    puts("write ok");

    int fd = open(in(dir, "report.txt"), O_RDONLY);
    if (fd < 0) fail("open");
    char buf[64] = {0};
    if (lseek(fd, 5, SEEK_SET) != 5) fail("seek");
    ssize_t n = read(fd, buf, 3);
    if (n != 3) fail("read");
    printf("read at 5: %s\n", buf);
    close(fd);

    struct stat st;
    if (stat(in(dir, "report.txt"), &st) != 0) fail("stat");
    printf("size %lld\n", (long long)st.st_size);

    if (mkdir(in(dir, "sub"), 0755) != 0 && errno != EEXIST) fail("mkdir");
    f = fopen(in(dir, "sub/tmp.txt"), "w");
    if (!f) fail("create in sub");
    fputs("moved\n", f);
    fclose(f);
    char from[512];
    snprintf(from, sizeof from, "%s/sub/tmp.txt", dir);
    if (rename(from, in(dir, "sub/moved.txt")) != 0) fail("rename");
    f = fopen(in(dir, "scratch.txt"), "w");
    if (!f) fail("create scratch");
    fclose(f);
    if (unlink(in(dir, "scratch.txt")) != 0) fail("unlink");
    puts("rename and unlink ok");

    DIR *d = opendir(in(dir, "sub"));
    if (!d) fail("opendir");
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] != '.') printf("entry: %s\n", e->d_name);
    }
    closedir(d);
    return 0;
}
