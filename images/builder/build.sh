#!/bin/sh
# Build kade's builder image with kade itself and push it: images/builder/build.sh REGISTRY/kade/builder:TAG [kade build flags]
set -eu
ref=${1:?usage: images/builder/build.sh REGISTRY/REPO:TAG [kade build flags...]}
shift
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
python=${PYTHON:-python3}
deps=$("$python" -c 'import tomllib,sys; print("\n".join(tomllib.load(open(sys.argv[1],"rb"))["project"]["dependencies"]))' "$repo/pyproject.toml")
if [ ! -f "$here/vendor/.deps" ] || [ "$(cat "$here/vendor/.deps")" != "$deps" ]; then
  rm -rf "$here/vendor"
  # shellcheck disable=SC2086
  "$python" -m pip install --quiet --no-compile --target "$here/vendor" --only-binary=:all: \
    --python-version 3.11 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform any $deps
  find "$here/vendor" -name __pycache__ -prune -exec rm -rf {} +
  printf '%s' "$deps" > "$here/vendor/.deps"
fi
exec "$python" -m kade build -f "$here/Dockerfile" -t "$ref" "$@" "$repo"
