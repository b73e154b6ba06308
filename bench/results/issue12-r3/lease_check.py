#!/usr/bin/env python3
"""What a write lease (fcntl F_SETLEASE F_WRLCK) says about other openers of a file: the
check a safe spare-file exchange for fs.put would rest on (bench/results/README.md, issue
12 third round). Run: python3 bench/results/issue12-r3/lease_check.py (as the file's owner).
SIGIO is ignored here: a lease break sends it to the holder, and its default action ends
the process (which is what the first, unguarded run of this check showed)."""
import fcntl, mmap, os, signal, tempfile

signal.signal(signal.SIGIO, signal.SIG_IGN)
d = tempfile.mkdtemp()
p = os.path.join(d, "spare")
with open(p, "w") as f:
    f.write("x" * 100)
fd = os.open(p, os.O_WRONLY)

def lease(what):
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        print(f"{what}: granted")
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    except OSError as e:
        print(f"{what}: refused ({e})")

lease("no other opener")
r = os.open(p, os.O_RDONLY)
lease("another read descriptor open")
m = mmap.mmap(r, 100, prot=mmap.PROT_READ)
os.close(r)
lease("only a mapping left (descriptor closed)")
m.close()
pp = os.open(p, os.O_PATH)
lease("an O_PATH descriptor open")
os.close(pp)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
try:
    os.close(os.open(p, os.O_RDONLY | os.O_NONBLOCK))
    print("O_NONBLOCK open while leased: opened")
except OSError as e:
    print(f"O_NONBLOCK open while leased: {e}")
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
print("fs.leases-enable", open("/proc/sys/fs/leases-enable").read().strip(),
      "lease-break-time", open("/proc/sys/fs/lease-break-time").read().strip())
