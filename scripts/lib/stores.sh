# Store fixtures for scripts: make_store KIND DIR prints a store spec; destroy_store KIND DIR.
# shellcheck shell=bash

make_store() {
  local kind=$1 dir=$2 out
  mkdir -p "$dir"
  case $kind in
    btrfs) out=$(scripts/fixtures/btrfs-loop create "$dir"); echo "btrfs:$out" ;;
    xfs) out=$(scripts/fixtures/xfs-loop create "$dir"); echo "xfs:$out" ;;
    zfs)
      out=$(scripts/fixtures/zfs-pool create "$dir")
      local pool mnt
      pool=$(echo "$out" | awk '{print $1}')
      mnt=$(echo "$out" | awk '{print $2}')
      if [ -n "$mnt" ] && [ "$(dirname "$mnt")" != / ]; then echo "zfs:$(dirname "$mnt")/$pool"; else echo "zfs:$pool"; fi
      ;;
    overlayfs | rsync) out=$(scripts/fixtures/overlay-dir create "$dir"); echo "$kind:$out/store" ;;
    *) echo "unknown store kind $kind" >&2; return 2 ;;
  esac
}

destroy_store() {
  local kind=$1 dir=$2
  case $kind in
    btrfs) scripts/fixtures/btrfs-loop destroy "$dir" ;;
    xfs) scripts/fixtures/xfs-loop destroy "$dir" ;;
    zfs) scripts/fixtures/zfs-pool destroy "$dir" ;;
    # The store's overlays and read-only views, deepest first, then the directory.
    overlayfs | rsync) scripts/fixtures/overlay-dir destroy "$dir" ;;
  esac
}
