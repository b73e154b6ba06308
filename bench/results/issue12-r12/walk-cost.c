// Issue 12, twelfth round: what the one walk saves, apart from the worker. The old inline
// get's opens (statx of the kept root's path, openat2 of the file beneath the root fd,
// close) against the new (openat2 of root/rel from the current directory with
// RESOLVE_NO_SYMLINKS, close), both RESOLVE_CACHED as inline, on a seven-level root.
//   gcc -O2 walk-cost.c -o /tmp/walk-cost-bin && /tmp/walk-cost-bin   (prints ns per open, 3 rounds)
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(void) {
  const char *root = "/tmp/walk-cost/a/b/c/d/e/root";
  const char *whole = "/tmp/walk-cost/a/b/c/d/e/root/f.bin";
  if (system("mkdir -p /tmp/walk-cost/a/b/c/d/e/root && "
             "head -c 1024 /dev/urandom > /tmp/walk-cost/a/b/c/d/e/root/f.bin") != 0)
    return 1;
  const int n = 300000;
  struct statx sx;
  int r = open(root, O_PATH | O_DIRECTORY);
  struct open_how beneath = {.flags = O_RDONLY | O_CLOEXEC,
                             .resolve = RESOLVE_BENEATH | RESOLVE_CACHED};
  struct open_how nosym = {.flags = O_RDONLY | O_CLOEXEC,
                           .resolve = RESOLVE_NO_SYMLINKS | RESOLVE_CACHED};
  for (int k = 0; k < 3; k++) {
    double t = now();
    for (int i = 0; i < n; i++) {
      statx(AT_FDCWD, root, AT_STATX_DONT_SYNC, STATX_TYPE | STATX_INO, &sx);
      int f = syscall(SYS_openat2, r, "f.bin", &beneath, sizeof beneath);
      close(f);
    }
    printf("statx root path + openat2 beneath + close: %.0f ns\n", (now() - t) / n);
    t = now();
    for (int i = 0; i < n; i++) {
      int f = syscall(SYS_openat2, AT_FDCWD, whole, &nosym, sizeof nosym);
      if (f < 0) {
        perror("openat2");
        return 1;
      }
      close(f);
    }
    printf("openat2 whole path (no symlinks) + close:  %.0f ns\n", (now() - t) / n);
  }
  return 0;
}
