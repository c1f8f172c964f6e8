#!/usr/bin/env bash
# The exit codes have one table, src/core/exit_codes.h; the README's table
# must list exactly its codes and names, in its order.
#
#   exit_codes.sh REPO
set -u
repo=$1
header=$(sed -n 's/^#define \(BASIN_EXIT_[A-Z_]*\) \([0-9]*\).*/\2 \1/p' "$repo/src/core/exit_codes.h")
readme=$(sed -n 's/^| \([0-9]*\) | `\(BASIN_EXIT_[A-Z_]*\)` |.*/\1 \2/p' "$repo/README.md")
if [ -z "$header" ]; then
  echo "FAILED: no '#define BASIN_EXIT_<NAME> <code>' lines in src/core/exit_codes.h" >&2
  exit 1
fi
if [ "$header" != "$readme" ]; then
  echo "FAILED: the README's exit-code table differs from src/core/exit_codes.h:" >&2
  diff <(echo "$header") <(echo "$readme") | sed 's/^/    /' >&2
  exit 1
fi
echo "exit_codes: $(echo "$header" | wc -l) codes, README and exit_codes.h agree"
