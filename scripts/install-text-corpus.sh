#!/usr/bin/env bash
# Installs the Debian packages the text corpus is read from (nestemb.data.text_corpus.PACKAGES;
# tests/test_dictionaries.py checks the two lists agree) when any is missing and we are root,
# like scripts/find-data.sh does for Fashion-MNIST. With --build [ARGS...] it then builds the
# corpus: python benchmarks/text_corpus.py build ARGS... (default output runs/text_corpus).
set -euo pipefail
PACKAGES="wordnet-base dict-gcide dict-foldoc dict-jargon dict-devil bible-kjv bible-kjv-text fortunes python3-doc postgresql-doc"
missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -z "$missing" ]; then
  echo "text corpus packages installed"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing the text corpus packages:$missing"
  # shellcheck disable=SC2086
  apt-get install -y -q $missing >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q $missing >/dev/null; }
else
  echo "text corpus packages missing:$missing (as root: apt-get install$missing)" >&2
  exit 1
fi
# Minimal images drop /usr/share/doc at install (dpkg path-exclude): the HTML manuals are then missing.
if [ ! -e /usr/share/doc/python3/html/index.html ] || ! ls /usr/share/doc/postgresql-doc-*/html/index.html >/dev/null 2>&1; then
  echo "warning: the Python or PostgreSQL HTML manual is missing (dpkg path-exclude?); build with --sources" \
       "wordnet,gcide,foldoc,jargon,devil,kjv,fortunes" "(no pydoc, pgdoc)" >&2
fi
if [ "${1:-}" = "--build" ]; then
  shift
  PY=.venv/bin/python; [ -x "$PY" ] || PY=python3
  "$PY" benchmarks/text_corpus.py build "$@"
fi
