# The cgroup v2 guest image for scripts/test-cgroup2: Debian bookworm built by the shared VM
# lane (../shared/tools/vmlane.sh: kernel 6.1, runc, crun, btrfs-progs, busybox-static), plus the
# packages strata's test fixtures run inside the guest (the local registry, skopeo, umoci, ...).
# Cached in $STRATA_VM_CACHE (default /var/cache/strata-vmlane); rebuilt only when the package
# list below changes or the image is missing.
# shellcheck shell=bash

# What the fixtures in scripts/fixtures/ call: registry (docker-registry, skopeo, curl, ss),
# busybox-image (umoci, file), btrfs-loop (losetup, mountpoint, mkfs.btrfs), overlay-dir (awk),
# the leftover scan (ps, fuser), jq for the lane's own checks, and the shared libraries the
# binaries built on the host link (libbtrfsutil1; the lane checks with ldd in the guest).
CGROUP2_GUEST_PACKAGES=(docker-registry skopeo umoci curl file iproute2 procps psmisc jq
  util-linux mawk busybox-static btrfs-progs runc crun ca-certificates libbtrfsutil1)

cgroup2_image_stamp() {
  printf '%s\n' "image v1" "${CGROUP2_GUEST_PACKAGES[@]}" | sha256sum | cut -c1-16
}

# cgroup2_image VMLANE CACHE: makes sure CACHE/image/{vmlinux,initrd-lane.img,root.img} exist
# with the extra packages; prints nothing on stdout.
cgroup2_image() {
  local vmlane=$1 cache=$2 img stamp
  img=$cache/image
  stamp=$(cgroup2_image_stamp)
  if [ -f "$img/root.img" ] && [ -f "$img/vmlinux" ] && [ "$(cat "$img/strata-image.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "test-cgroup2: guest image cached in $img" >&2
    return 0
  fi
  mkdir -p "$cache"
  rm -f "$img/strata-image.stamp"
  if [ ! -d "$img/rootfs/usr" ] || [ ! -f "$img/vmlinux" ]; then
    echo "test-cgroup2: building the Debian bookworm guest image (about 1.5 minutes, once)" >&2
    VMLANE_CACHE=$cache/debcache bash "$vmlane" build "$img" >&2
  fi
  echo "test-cgroup2: installing ${CGROUP2_GUEST_PACKAGES[*]} into the guest image" >&2
  cgroup2_chroot_install "$img/rootfs" "$cache/debcache"
  bash "$vmlane" mkimg "$img" >&2
  echo "$stamp" > "$img/strata-image.stamp"
}

# cgroup2_chroot_install ROOTFS DEBCACHE: apt-get install the packages inside ROOTFS, with the
# host's network and DNS, /proc mounted and services kept from starting; undone on return.
cgroup2_chroot_install() {
  local root=$1 debs=$2 status=0 own_resolv=
  mkdir -p "$debs" "$root/var/cache/apt/archives"
  mount -t proc proc "$root/proc"
  mount --bind "$debs" "$root/var/cache/apt/archives"
  if [ ! -e "$root/etc/resolv.conf" ]; then cp /etc/resolv.conf "$root/etc/resolv.conf"; own_resolv=1; fi
  printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
  chmod 755 "$root/usr/sbin/policy-rc.d"
  chroot "$root" /usr/bin/env DEBIAN_FRONTEND=noninteractive PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends ${CGROUP2_GUEST_PACKAGES[*]} >/dev/null" \
    || status=$?
  rm -f "$root/usr/sbin/policy-rc.d" "$root"/var/lib/apt/lists/*_Packages
  [ -z "$own_resolv" ] || rm -f "$root/etc/resolv.conf"
  umount "$root/var/cache/apt/archives"
  umount "$root/proc"
  [ "$status" = 0 ] || { echo "test-cgroup2: apt-get install in the guest rootfs failed ($status)" >&2; return "$status"; }
}
