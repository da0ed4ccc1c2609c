#!/usr/bin/env bash
# Finds Fashion-MNIST in nestemb's search order; installs the Debian package when none is found
# and we are root. The order matches nestemb.data.paths.resolve_fashion_mnist.
set -euo pipefail
for d in "${NESTEMB_DATA:-}" ../shared/data/fashion-mnist /usr/share/datasets/fashion-mnist; do
  if [ -n "$d" ] && ls "$d"/*-images-idx3-ubyte* >/dev/null 2>&1; then
    echo "Fashion-MNIST found in $d"; exit 0
  fi
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Fashion-MNIST not found: installing the Debian package dataset-fashion-mnist"
  apt-get install -y -q dataset-fashion-mnist >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }
  exit 0
fi
echo "Fashion-MNIST not found: set NESTEMB_DATA to a folder with the IDX files" >&2
exit 1
