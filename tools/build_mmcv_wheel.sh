#!/usr/bin/env bash
# Build the mmcv 2.1.0 wheel (CPU ops) once and keep it in a cache outside the repo.
# mmcv 2.1.0 ships only an sdist on PyPI, and it does not build as is against torch 2.14:
#  - setup.py imports pkg_resources, so setuptools<81 and --no-build-isolation (pinned in requirements.txt);
#  - setup.py forces -std=c++17 while torch 2.14's headers need C++20, so we patch the flag.
# About 10 minutes on 2 idle cores; later installs take seconds from the cache.
set -euo pipefail
PY=${1:?usage: build_mmcv_wheel.sh PYTHON CACHE_DIR}
# absolute, but not resolved: a venv python is a symlink to the base interpreter
[[ "$PY" = /* ]] || PY="$PWD/$PY"
CACHE=${2:?usage: build_mmcv_wheel.sh PYTHON CACHE_DIR}
VERSION=${MMCV_VERSION:-2.1.0}
mkdir -p "$CACHE"
if ls "$CACHE"/mmcv-"$VERSION"-*.whl >/dev/null 2>&1; then
  echo "mmcv $VERSION wheel found in $CACHE"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "Building mmcv $VERSION from source (about 10 minutes on 2 cores; cached in $CACHE afterwards)"
"$PY" -m pip download --no-deps --no-build-isolation --no-binary :all: "mmcv==$VERSION" -d "$work"
tar -xzf "$work"/mmcv-"$VERSION".tar.gz -C "$work"
src="$work/mmcv-$VERSION"
grep -q -- "-std=c++17" "$src/setup.py" || { echo "mmcv setup.py no longer sets -std=c++17; check the patch" >&2; exit 1; }
sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
(cd "$src" && MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} "$PY" -m pip wheel --no-deps --no-build-isolation . -w "$work/dist")
cp "$work"/dist/mmcv-*.whl "$CACHE"/
echo "mmcv wheel cached: $(ls "$CACHE"/mmcv-*.whl)"
