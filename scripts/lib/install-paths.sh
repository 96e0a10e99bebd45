# Where scripts/install puts things and scripts/uninstall takes them from (one list for both).
# install_paths PREFIX sets:
#   INSTALL_BIN        PREFIX/bin/strata
#   INSTALL_MAN        PREFIX/share/man/man1/strata.1
#   INSTALL_BASH       PREFIX/share/bash-completion/completions/strata
#   INSTALL_ZSH        PREFIX/share/zsh/site-functions/_strata
#   INSTALL_FISH       PREFIX/share/fish/vendor_completions.d/strata.fish
#   INSTALL_UNITDIR    PREFIX/lib/systemd/system (strata-prune.service, strata-prune.timer)
#   INSTALL_CRON       /etc/cron.d/strata-prune, or PREFIX/etc/cron.d/strata-prune with a prefix
#   INSTALL_STORE_DIR  /var/lib/strata, or PREFIX/var/lib/strata with a prefix
#   INSTALL_MANIFEST   PREFIX/share/strata/install-manifest (the directories install created)
# With no prefix given (PREFIX empty) the binary, man page, completions and units go under
# /usr/local and the cron file and store under / (where cron and operators look for them).
# shellcheck shell=bash

install_paths() {
  local prefix=$1 root
  if [ -z "$prefix" ]; then
    root=
    prefix=/usr/local
  else
    root=$prefix
  fi
  INSTALL_PREFIX=$prefix
  INSTALL_BIN=$prefix/bin/strata
  INSTALL_MAN=$prefix/share/man/man1/strata.1
  INSTALL_BASH=$prefix/share/bash-completion/completions/strata
  INSTALL_ZSH=$prefix/share/zsh/site-functions/_strata
  INSTALL_FISH=$prefix/share/fish/vendor_completions.d/strata.fish
  INSTALL_UNITDIR=$prefix/lib/systemd/system
  INSTALL_SERVICE=$INSTALL_UNITDIR/strata-prune.service
  INSTALL_TIMER=$INSTALL_UNITDIR/strata-prune.timer
  INSTALL_CRON=$root/etc/cron.d/strata-prune
  INSTALL_STORE_DIR=$root/var/lib/strata
  INSTALL_MANIFEST=$prefix/share/strata/install-manifest
  # Every file install writes (the manifest aside), in install order.
  INSTALL_FILES=("$INSTALL_BIN" "$INSTALL_MAN" "$INSTALL_BASH" "$INSTALL_ZSH" "$INSTALL_FISH"
    "$INSTALL_SERVICE" "$INSTALL_TIMER" "$INSTALL_CRON")
}

# An absolute path without "..", whitespace or characters that cron, systemd or sh would read
# specially (the path ends up in a crontab line and an ExecStart= line).
install_check_path() {
  local what=$1 path=$2
  case $path in
    /*) ;;
    *) echo "$what must be an absolute path, not '$path'" >&2; return 2 ;;
  esac
  if [[ "$path" =~ [[:space:]%\"\'\\\$\`\;\&\|\<\>\*\?] ]] || [[ "$path" == *..* ]]; then
    echo "$what '$path' has a character cron or systemd would read specially (or ..): choose another" >&2
    return 2
  fi
}
