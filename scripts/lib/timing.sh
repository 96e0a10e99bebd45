# Shared helpers for benchmark scripts: timing commands and summarising runs.
# shellcheck shell=bash

# time_ms CMD...: runs CMD (output discarded), prints its wall time in milliseconds.
time_ms() {
  local start end
  start=$(date +%s%N)
  "$@" >/dev/null 2>&1 || { echo "benchmark command failed: $*" >&2; return 1; }
  end=$(date +%s%N)
  echo $(( (end - start) / 1000000 ))
}

# median N1 N2 ...: prints the median.
median() {
  printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# ratio A B: A/B with two decimals.
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "inf"; else printf "%.2f", a / b }'
}

# hardware: a one-paragraph description of this machine for the results files.
hardware() {
  local cpu mem kernel
  cpu=$(lscpu | awk -F: '/Model name/ { gsub(/^ +/, "", $2); print $2; exit }')
  mem=$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
  kernel=$(uname -r)
  echo "$(nproc) x ${cpu:-unknown CPU}, ${mem} RAM, Linux ${kernel}, $(. /etc/os-release && echo "$PRETTY_NAME")"
}

# bench_commit: the commit the benchmarked tree is at (`git rev-parse --short HEAD`), with
# `-dirty` when tracked files differ from it (uncommitted changes were built in).
bench_commit() {
  local rev
  rev=$(git rev-parse --short HEAD 2>/dev/null) || { echo "unknown commit"; return 0; }
  git diff --quiet HEAD -- 2>/dev/null || rev="$rev-dirty"
  echo "$rev"
}

# bench_header SCRIPT [SETTINGS] [COMMIT]: the line under a section's title: what produced it,
# when, at which commit (default: bench_commit now; pass the one taken when the binary was
# built), in a release build, on which hardware.
bench_header() {
  local script=$1 settings=${2:-} commit=${3:-}
  [ -n "$commit" ] || commit=$(bench_commit)
  echo "\`$script\`${settings:+ ($settings)}, run on $(date -u +%Y-%m-%d) at commit $commit, release build. Hardware: $(hardware)."
}
