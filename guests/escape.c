// Tries every way out of its preopen (argv[1]) and prints, for each, ESCAPED with what
// it read or BLOCKED with the error. The host test plants `secret.txt` one level above
// the preopen and a symlink `link-out` inside it pointing at that directory.
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void try_read(const char *label, const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) { printf("%s: BLOCKED (%s)\n", label, strerror(errno)); return; }
    char buf[64] = {0};
    ssize_t n = read(fd, buf, sizeof buf - 1);
    printf("%s: ESCAPED read %zd bytes: %s\n", label, n, buf);
    close(fd);
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *d = argv[1];
    char p[512];
    snprintf(p, sizeof p, "%s/../secret.txt", d);
    try_read("dotdot", p);
    snprintf(p, sizeof p, "%s/sub/../../secret.txt", d);
    try_read("nested-dotdot", p);
    try_read("absolute", "/etc/passwd");
    try_read("root", "/secret.txt");
    snprintf(p, sizeof p, "%s/link-out/secret.txt", d);
    try_read("planted-symlink", p);
    char link[512];
    snprintf(link, sizeof link, "%s/made-link", d);
    if (symlink("/etc/passwd", link) == 0) try_read("guest-absolute-symlink", link);
    else printf("guest-absolute-symlink: BLOCKED (%s)\n", strerror(errno));
    snprintf(link, sizeof link, "%s/made-link2", d);
    if (symlink("../secret.txt", link) == 0) try_read("guest-relative-symlink", link);
    else printf("guest-relative-symlink: BLOCKED (%s)\n", strerror(errno));
    try_read("no-preopen", "secret.txt");
    return 0;
}
