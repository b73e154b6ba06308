// What one system call of an inline fs.get costs on this machine (issue 12, tenth round).
// cc -O2 -o syscall_cost syscall_cost.c && ./syscall_cost DIR   (DIR: a tenant root with a
// 1 KiB file "f"; the bench's is <tmp>/bench). Each figure: ns per call, best of 5 runs of
// 200 000 calls.
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

#define N 200000
#define BEST(label, body)                                                   \
    do {                                                                    \
        double best = 1e18;                                                 \
        for (int r = 0; r < 5; r++) {                                       \
            double t0 = now_ns();                                           \
            for (int i = 0; i < N; i++) { body; }                           \
            double per = (now_ns() - t0) / N;                               \
            if (per < best) best = per;                                     \
        }                                                                   \
        printf("%-46s %7.0f ns\n", label, best);                            \
    } while (0)

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s DIR\n", argv[0]); return 2; }
    const char *dir = argv[1];
    int root = open(dir, O_PATH | O_DIRECTORY);
    if (root < 0) { perror("open root"); return 1; }
    struct statx stx;
    struct open_how how = {.flags = O_RDONLY | O_NONBLOCK | O_CLOEXEC,
                           .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS};
    char buf[4096];
    BEST("getppid (entry and exit only)", syscall(SYS_getppid));
    BEST("statx(root path) [roots::take]",
         statx(AT_FDCWD, dir, AT_STATX_DONT_SYNC, STATX_TYPE | STATX_INO, &stx));
    // The same check walked from a held descriptor of the root's parent: one component.
    char parent[4096], name[4096];
    snprintf(parent, sizeof parent, "%s", dir);
    char *slash = strrchr(parent, '/');
    if (!slash || slash == parent) { fprintf(stderr, "DIR: an absolute path below /\n"); return 2; }
    snprintf(name, sizeof name, "%s", slash + 1);
    *slash = 0;
    int up = open(parent, O_PATH | O_DIRECTORY);
    if (up < 0) { perror("open parent"); return 1; }
    BEST("statx(parent fd, root's name)",
         statx(up, name, AT_STATX_DONT_SYNC, STATX_TYPE | STATX_INO, &stx));
    BEST("statx(fd, \"\", AT_EMPTY_PATH)",
         statx(root, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &stx));
    BEST("openat2(root, \"f\", BENEATH) + close", {
        int fd = syscall(SYS_openat2, root, "f", &how, sizeof how);
        close(fd);
    });
    BEST("openat(root, \"f\") + close (no RESOLVE flags)", {
        int fd = openat(root, "f", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
        close(fd);
    });
    char full[4096];
    snprintf(full, sizeof full, "%s/f", dir);
    BEST("open(full path) + close (the plain loop's)", {
        int fd = open(full, O_RDONLY | O_CLOEXEC);
        close(fd);
    });
    int fd = syscall(SYS_openat2, root, "f", &how, sizeof how);
    if (fd < 0) { perror("openat2 f"); return 1; }
    BEST("pread 1 KiB", pread(fd, buf, sizeof buf, 0));
    BEST("the get: statx root, openat2, statx, pread, close", {
        statx(AT_FDCWD, dir, AT_STATX_DONT_SYNC, STATX_TYPE | STATX_INO, &stx);
        int g = syscall(SYS_openat2, root, "f", &how, sizeof how);
        statx(g, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &stx);
        pread(g, buf, sizeof buf, 0);
        close(g);
    });
    return 0;
}
