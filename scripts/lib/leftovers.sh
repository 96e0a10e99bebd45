# The independent leftover check for scripts: `store-leftovers` from the strata-testkit crate.
# shellcheck shell=bash

# leftovers_binary: prints the path of store-leftovers. Next to $STRATA_BIN when that directory
# has one (CI builds every target into target/debug), else target/debug/store-leftovers, built
# now (`cargo build -p strata-testkit --bins`) so that it is never stale.
leftovers_binary() {
  if [ -n "${STRATA_BIN:-}" ]; then
    local dir
    dir=$(cd "$(dirname "$STRATA_BIN")" && pwd)
    if [ -x "$dir/store-leftovers" ]; then echo "$dir/store-leftovers"; return 0; fi
  fi
  cargo build -p strata-testkit --bins --quiet >&2 || { echo "cannot build store-leftovers" >&2; return 3; }
  echo "$(pwd)/target/debug/store-leftovers"
}
