# The strata binary for scripts: $STRATA_BIN when set (CI passes the debug build it already
# has), else a fresh release build. Prints the binary's path.
# shellcheck shell=bash

strata_binary() {
  if [ -n "${STRATA_BIN:-}" ]; then
    [ -x "$STRATA_BIN" ] || { echo "STRATA_BIN=$STRATA_BIN is not an executable" >&2; return 3; }
    (cd "$(dirname "$STRATA_BIN")" && echo "$(pwd)/$(basename "$STRATA_BIN")")
  else
    cargo build --release --quiet
    echo "$(pwd)/target/release/strata"
  fi
}
