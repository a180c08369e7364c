#!/usr/bin/env bash
# Here (no GPU needed), from the project root: prepares .device/ for benchmarks/gpu/check.sh.
#   bash benchmarks/gpu/prepare.sh
# 1. the shared device kit (onnxruntime-gpu in parts, diffusers, polygraphy, onnxslim): ../shared/device/prepare.sh
# 2. TensorRT-RTX 1.7.1.116 for Python 3.12: its bindings wheel, its meta package built into a wheel here (it is an
#    sdist on PyPI, which the shared kit's binary-only download cannot fetch) and its 95 MB libs wheel cut into parts.
# Then it prints the device calls to make, back to back (the machine stays warm ~30 s between calls).
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
# the shared kit writes .git/info/exclude: run this in the checkout the device tool sends (not a worktree)
[[ -d .git ]] || { echo "prepare.sh: run it in the main checkout (the one the device tool sends; .git is not a folder here)" >&2; exit 2; }
kit=${SDRT_DEVICE_KIT:-}
for candidate in ../shared/device/prepare.sh ../../shared/device/prepare.sh /work/shared/device/prepare.sh; do
  [[ -z $kit && -f $candidate ]] && kit=$candidate
done
[[ -n $kit ]] || { echo "prepare.sh: the shared device kit (shared/device/prepare.sh) is not found: set SDRT_DEVICE_KIT" >&2; exit 2; }
bash "$kit" > /dev/null   # writes .device/ (parts + kit/ with install.sh and parts.txt)

RTX=1.7.1.116
PART_MB=${PART_MB:-58}
plat=(--only-binary=:all: --python-version 3.12 --implementation cp
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps "${plat[@]}" -d .device/kit "tensorrt-rtx-cu13-bindings==$RTX"
python3 -m pip wheel -q --no-deps -w .device/kit "tensorrt-rtx-cu13==$RTX"
mkdir -p .device/big
python3 -m pip download -q --no-deps "${plat[@]}" -d .device/big "tensorrt-rtx-cu13-libs==$RTX"
n=$(ls .device/part-* | sed -E 's/.*part-([0-9]+)-.*/\1/' | sort -u | wc -l)
for whl in .device/big/*.whl; do
  name=$(basename "$whl")
  sum=$(sha256sum "$whl" | cut -d' ' -f1)
  tag=$(printf %02d "$n")
  split -b "${PART_MB}M" -d -a 2 "$whl" ".device/part-$tag-"
  for p in .device/part-$tag-*; do echo "$(basename "$p") $name $sum" >> .device/kit/parts.txt; done
  n=$((n + 1))
done
rm -rf .device/big

parts=(.device/part-*)
echo "Prepared $(du -sh .device | cut -f1) in .device/: ${#parts[@]} parts + kit/ ($(du -sh .device/kit | cut -f1))."
echo "Device calls, back to back (timeout_s of the last: 600; it runs the whole check, ~8 min):"
last=$((${#parts[@]} - 1))
for i in "${!parts[@]}"; do
  if (( i < last )); then
    echo "  run  carry=[\"${parts[$i]}\"]  command=\"ls -la .device\""
  else
    echo "  run  carry=[\"${parts[$i]}\", \".device/kit\"]  timeout_s=600  command=\"bash benchmarks/gpu/check.sh\""
  fi
done
echo "Then give_back. What comes back: \$OUT/summary.md, check-logs.tar.gz and the gpu-sd15 result files."
