#!/usr/bin/env bash
# Copies the parts of /sys that `beamline_worker plan` reads into DIR, so that a host's
# placement can be planned elsewhere: `beamline_worker plan --sysfs-root DIR`.
# Usage: scripts/capture-sysfs.sh DIR [SYSFS]   (SYSFS defaults to /sys)
set -euo pipefail
out=${1:?usage: capture-sysfs.sh DIR [SYSFS]}
sys=${2:-/sys}
copy() { # copy one file if it exists and is readable
  local rel=$1
  [ -r "$sys/$rel" ] || return 0
  mkdir -p "$out/$(dirname "$rel")"
  cat "$sys/$rel" >"$out/$rel" 2>/dev/null || rm -f "$out/$rel"
}
copy devices/system/cpu/online
copy devices/system/cpu/possible
for c in "$sys"/devices/system/cpu/cpu[0-9]*; do
  c=${c#"$sys"/}
  copy "$c/online"
  for f in thread_siblings_list core_id physical_package_id; do copy "$c/topology/$f"; done
  for i in "$sys/$c"/cache/index*; do
    [ -d "$i" ] || continue
    i=${i#"$sys"/}
    for f in level type shared_cpu_list; do copy "$i/$f"; done
  done
done
copy devices/system/node/online
for n in "$sys"/devices/system/node/node[0-9]*; do
  [ -d "$n" ] || continue
  copy "${n#"$sys"/}/cpulist"
done
# PCI functions: the plan keeps NVIDIA display/3D controllers (vendor 0x10de, class 0x03*).
for d in "$sys"/bus/pci/devices/*; do
  [ -e "$d" ] || continue
  d=${d#"$sys"/}
  for f in vendor device class numa_node local_cpulist; do copy "$d/$f"; done
done
echo "captured $(find "$out" -type f | wc -l) files under $out"
