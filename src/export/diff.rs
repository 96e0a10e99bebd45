//! What a layer holds: the whole of a tree, or what changed from a lower tree to an upper
//! one, walked in name order (so the same trees always give the same entries).
//!
//! Compared for an entry present in both: type, permission bits, owner, symlink target,
//! device numbers, xattrs, the link count of regular files (so a new hard link brings its
//! sibling into the layer), size, and, when the sizes match, the bytes themselves (a file
//! rewritten with the same size and mtime is still caught). Modification times count only
//! with `keep_mtimes` (otherwise a layer does not carry them).
//!
//! Deletions become OCI whiteouts (`.wh.NAME`). A directory none of whose old names is
//! left (it was removed and made again) is marked opaque (`.wh..wh..opq`) and written
//! whole, instead of one whiteout per old name. A changed type (a file where a directory
//! was, or the reverse) is written as the new entry, which extractors put in place of the
//! old one.

use std::cmp::Ordering;
use std::io::Read;

use super::tree::{join, Entry, Kind, Listing, Meta, Tree, Xattrs};
use super::ExportError;

/// The OCI prefix of whiteout names.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The name of the opaque-directory marker.
pub const OPAQUE: &[u8] = b".wh..wh..opq";

/// Where layer entries go.
pub trait Sink {
    /// The entry `rel` of `tree`, with `meta`; a directory's xattrs come in `dir_xattrs`
    /// (a sink reads a regular file's from the file it opens).
    fn entry(&mut self, tree: &Tree, rel: &[u8], meta: &Meta, dir_xattrs: &Xattrs) -> Result<(), ExportError>;
    /// A whiteout named `name` (`.wh.X` or the opaque marker) in the directory `dir`.
    fn whiteout(&mut self, dir: &[u8], name: &[u8]) -> Result<(), ExportError>;
}

fn read_err(tree: &Tree, rel: &[u8], what: &str) -> impl FnOnce(std::io::Error) -> ExportError {
    let context = format!("{what} {}", tree.show(rel));
    move |source| ExportError::Read { context, source }
}

fn list(tree: &Tree, rel: &[u8]) -> Result<Listing, ExportError> {
    let listing = tree.list(rel).map_err(read_err(tree, rel, "listing"))?;
    if let Some(e) = listing.entries.iter().find(|e| e.name.starts_with(WHITEOUT_PREFIX)) {
        return Err(ExportError::Unrepresentable(format!(
            "{}: names starting with .wh. are whiteouts in OCI layers",
            tree.show(&join(rel, &e.name))
        )));
    }
    Ok(listing)
}

/// Every entry of `tree` (its root's children and below).
pub fn whole(tree: &Tree, sink: &mut dyn Sink) -> Result<(), ExportError> {
    let listing = list(tree, b"")?;
    whole_children(tree, b"", &listing, sink)
}

fn whole_children(tree: &Tree, dir: &[u8], listing: &Listing, sink: &mut dyn Sink) -> Result<(), ExportError> {
    for entry in &listing.entries {
        whole_entry(tree, &join(dir, &entry.name), &entry.meta, sink)?;
    }
    Ok(())
}

fn whole_entry(tree: &Tree, rel: &[u8], meta: &Meta, sink: &mut dyn Sink) -> Result<(), ExportError> {
    if meta.kind == Kind::Dir {
        let listing = list(tree, rel)?;
        sink.entry(tree, rel, meta, &listing.xattrs)?;
        whole_children(tree, rel, &listing, sink)
    } else {
        sink.entry(tree, rel, meta, &Vec::new())
    }
}

/// What changed from `lower` to `upper`.
pub fn diff(lower: &Tree, upper: &Tree, keep_mtimes: bool, sink: &mut dyn Sink) -> Result<(), ExportError> {
    let walk = Walk {
        lower,
        upper,
        keep_mtimes,
    };
    let old = list(lower, b"")?;
    let new = list(upper, b"")?;
    walk.children(b"", &old, &new, sink)
}

struct Walk<'a> {
    lower: &'a Tree,
    upper: &'a Tree,
    keep_mtimes: bool,
}

impl Walk<'_> {
    fn children(&self, dir: &[u8], old: &Listing, new: &Listing, sink: &mut dyn Sink) -> Result<(), ExportError> {
        let (mut i, mut j) = (0, 0);
        while i < old.entries.len() || j < new.entries.len() {
            let a = old.entries.get(i);
            let b = new.entries.get(j);
            let order = match (a, b) {
                (Some(a), Some(b)) => a.name.cmp(&b.name),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => break,
            };
            match (order, a, b) {
                (Ordering::Equal, Some(a), Some(b)) => {
                    self.both(&join(dir, &a.name), a, b, sink)?;
                    i += 1;
                    j += 1;
                }
                (Ordering::Less, Some(a), _) => {
                    sink.whiteout(dir, &[WHITEOUT_PREFIX, &a.name].concat())?;
                    i += 1;
                }
                (_, _, Some(b)) => {
                    whole_entry(self.upper, &join(dir, &b.name), &b.meta, sink)?;
                    j += 1;
                }
                _ => break,
            }
        }
        Ok(())
    }

    fn both(&self, rel: &[u8], a: &Entry, b: &Entry, sink: &mut dyn Sink) -> Result<(), ExportError> {
        let (old, new) = (&a.meta, &b.meta);
        if old.kind != new.kind {
            return whole_entry(self.upper, rel, new, sink);
        }
        let same_meta = old.mode == new.mode
            && old.uid == new.uid
            && old.gid == new.gid
            && (!self.keep_mtimes || (old.mtime == new.mtime && old.mtime_nsec == new.mtime_nsec));
        match new.kind {
            Kind::Dir => {
                let old_list = list(self.lower, rel)?;
                let new_list = list(self.upper, rel)?;
                let replaced = !old_list.entries.is_empty()
                    && !old_list
                        .entries
                        .iter()
                        .any(|o| new_list.entries.binary_search_by(|n| n.name.cmp(&o.name)).is_ok());
                if replaced {
                    sink.entry(self.upper, rel, new, &new_list.xattrs)?;
                    sink.whiteout(rel, OPAQUE)?;
                    return whole_children(self.upper, rel, &new_list, sink);
                }
                if !same_meta || old_list.xattrs != new_list.xattrs {
                    sink.entry(self.upper, rel, new, &new_list.xattrs)?;
                }
                self.children(rel, &old_list, &new_list, sink)
            }
            Kind::Regular => {
                if !same_meta || old.size != new.size || old.nlink != new.nlink || !self.same_file(rel, old, new)? {
                    sink.entry(self.upper, rel, new, &Vec::new())?;
                }
                Ok(())
            }
            Kind::Symlink => {
                let old_target = self
                    .lower
                    .read_link(rel)
                    .map_err(read_err(self.lower, rel, "reading"))?;
                let new_target = self
                    .upper
                    .read_link(rel)
                    .map_err(read_err(self.upper, rel, "reading"))?;
                if !same_meta || old_target != new_target {
                    sink.entry(self.upper, rel, new, &Vec::new())?;
                }
                Ok(())
            }
            Kind::Char | Kind::Block | Kind::Fifo => {
                if !same_meta || old.rdev != new.rdev {
                    sink.entry(self.upper, rel, new, &Vec::new())?;
                }
                Ok(())
            }
        }
    }

    /// Whether two regular files of the same size have the same xattrs and bytes.
    fn same_file(&self, rel: &[u8], old: &Meta, new: &Meta) -> Result<bool, ExportError> {
        let mut a = self
            .lower
            .open_file(rel, old)
            .map_err(read_err(self.lower, rel, "opening"))?;
        let mut b = self
            .upper
            .open_file(rel, new)
            .map_err(read_err(self.upper, rel, "opening"))?;
        let xa =
            super::tree::read_xattrs(std::os::fd::AsFd::as_fd(&a)).map_err(read_err(self.lower, rel, "reading"))?;
        let xb =
            super::tree::read_xattrs(std::os::fd::AsFd::as_fd(&b)).map_err(read_err(self.upper, rel, "reading"))?;
        if xa != xb {
            return Ok(false);
        }
        const CHUNK: usize = 256 << 10;
        let mut ba = vec![0u8; CHUNK];
        let mut bb = vec![0u8; CHUNK];
        loop {
            let na = read_full(&mut a, &mut ba).map_err(read_err(self.lower, rel, "reading"))?;
            let nb = read_full(&mut b, &mut bb).map_err(read_err(self.upper, rel, "reading"))?;
            if na != nb || ba[..na] != bb[..nb] {
                return Ok(false);
            }
            if na < CHUNK {
                return Ok(true);
            }
        }
    }
}

/// Reads until `buf` is full or the file ends; the count read.
fn read_full(file: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
