//! Safe layer unpacking: one tar stream (gzip, zstd or plain, told apart by magic bytes)
//! applied on top of a rootfs.
//!
//! Invariants:
//! - Nothing is created, changed or removed outside `rootfs`. Entry paths are cleaned
//!   lexically (absolute paths are taken relative to the rootfs; a `..` that would climb
//!   above it makes the layer refused); parent directories are then resolved with
//!   `openat2(RESOLVE_IN_ROOT)`, so a symlinked parent (absolute or with `..`) is followed
//!   *inside* the rootfs; the last component is created relative to that directory fd and
//!   never followed (see `fsat`).
//! - Hard links may only point at something already inside the rootfs.
//! - Whiteouts (`.wh.NAME`) remove NAME from the lower layers; an opaque marker
//!   (`.wh..wh..opq`) empties its directory of everything this layer did not write.
//!   Neither is materialised.
//! - Ownership, permission bits (setuid included), mtimes and xattrs (best-effort) are kept;
//!   device nodes are made only when running as root.
//! - `trusted.*` xattrs are dropped (noted in the log): they are the kernel's and overlayfs'
//!   own metadata (`trusted.overlay.opaque`, `redirect`, `metacopy`...), never an image's to set.
//! - An image unpacks to at most its budget ([`ByteBudget`]): file contents (holes of sparse
//!   files included, as they are written out) plus [`ENTRY_COST`] bytes per entry. The layer
//!   stops with an error naming the image and the cap before a byte past it is written.
//!
//! Errors leave a partly unpacked rootfs behind: the caller discards the whole item.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;

use strata_sandbox::Cancel;

use super::digest::{BlobFailure, VerifyingReader};
use super::fsat;
use super::FetchError;

/// What one layer did to the rootfs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Tar entries applied (whiteouts included).
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// Whiteout entries seen (opaque markers included).
    pub whiteouts: u64,
    /// Device nodes skipped because we are not root.
    pub skipped_devices: u64,
    /// Things worth a line in the step log (skipped entries, ignored metadata).
    pub notes: Vec<String>,
    /// What the layer cost against the image's budget (see [`ByteBudget`]).
    pub charged: u64,
}

/// What each tar entry costs against the budget, besides its contents (a header's size), so
/// that millions of empty files count too.
pub const ENTRY_COST: u64 = 512;

/// The cap on the bytes one image unpacks to, all layers together, and what the layers
/// before this one used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteBudget {
    pub cap: u64,
    pub used: u64,
}

impl ByteBudget {
    /// `None` (no cap) when `cap` is 0.
    pub fn new(cap: u64, used: u64) -> Option<ByteBudget> {
        (cap > 0).then_some(ByteBudget { cap, used })
    }
}

/// `n` bytes in the largest binary unit that divides it (`64 MiB`, `1000 bytes`).
pub fn show_bytes(n: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n >= 1 << shift && n.trailing_zeros() >= shift {
            return format!("{} {unit}", n >> shift);
        }
    }
    format!("{n} bytes")
}

/// Unpacks one layer (compressed or not) into `rootfs`.
pub fn unpack_layer(reader: impl Read, rootfs: &Path) -> Result<UnpackStats, FetchError> {
    let label = rootfs.display().to_string();
    unpack_layer_with(reader, rootfs, &LayerCheck::default(), &label, None)
}

/// What a layer is checked against while it is unpacked.
#[derive(Debug, Clone, Default)]
pub struct LayerCheck {
    /// Digest and size of the stream as stored (compressed).
    pub digest: Option<String>,
    pub size: Option<u64>,
    /// Digest of the uncompressed tar (docker-archive layers are named by it).
    pub diff_id: Option<String>,
    /// The image's cap on unpacked bytes; `None` for none.
    pub budget: Option<ByteBudget>,
}

/// Unpacks a layer, verifying it against `check`, and naming `label` (the image reference)
/// in errors. The stream is read to its end even when the tar ends earlier, so that a
/// digest mismatch or trailing garbage is always noticed.
pub fn unpack_layer_with(
    reader: impl Read,
    rootfs: &Path,
    check: &LayerCheck,
    label: &str,
    cancel: Option<&Cancel>,
) -> Result<UnpackStats, FetchError> {
    let mut raw = VerifyingReader::new(reader, check.digest.clone(), check.size, cancel.cloned());
    let raw_check = raw.check();
    let mut plain_check = None;
    let result = (|| {
        let decompressed = decompress(&mut raw).map_err(|e| io_error("reading layer", e))?;
        let mut plain = VerifyingReader::new(decompressed, check.diff_id.clone(), None, None);
        plain_check = Some(plain.check());
        let mut unpacker = Unpacker::new(rootfs, label, cancel, check.budget)?;
        unpacker.run(&mut plain)?;
        io::copy(&mut plain, &mut io::sink()).map_err(|e| io_error("reading layer", e))?;
        drop(plain);
        io::copy(&mut raw, &mut io::sink()).map_err(|e| io_error("reading layer", e))?;
        Ok(unpacker.stats)
    })();
    if matches!(result, Err(FetchError::TooLarge { .. })) {
        // Reading a bomb to its end to check its digest would take what the cap saves.
        return result;
    }
    if result.is_err() && !matches!(result, Err(FetchError::Cancelled(_))) {
        // A blob that does not match its digest explains a decompression or tar error
        // better than the error itself: read it to its end (bounded by the descriptor's
        // size) so the check can speak.
        let _ = io::copy(&mut raw, &mut io::sink());
    }
    let failure = raw_check.failure().or_else(|| plain_check.and_then(|c| c.failure()));
    match failure {
        Some(BlobFailure::Cancelled) => Err(FetchError::Cancelled(label.to_owned())),
        Some(BlobFailure::Mismatch { expected, actual }) if check.diff_id.as_deref() == Some(expected.as_str()) => {
            Err(FetchError::Unavailable {
                reference: label.to_owned(),
                reason: format!("layer with diff_id {expected} unpacks to {actual}: corrupt or tampered"),
            })
        }
        Some(failure) => Err(FetchError::Unavailable {
            reference: label.to_owned(),
            reason: failure.to_string(),
        }),
        None => result,
    }
}

fn io_error(context: &str, source: io::Error) -> FetchError {
    FetchError::Io {
        context: context.to_owned(),
        source,
    }
}

/// Wraps `reader` in the decompressor its first bytes call for.
pub fn decompress<'a>(mut reader: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < magic.len() {
        match reader.read(&mut magic[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    let head = io::Cursor::new(magic[..n].to_vec()).chain(reader);
    if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(head)))
    } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Ok(Box::new(zstd::stream::read::Decoder::new(head)?))
    } else {
        Ok(Box::new(head))
    }
}

/// Cleans a tar path lexically: drops empty, `.` and leading `/` components and applies
/// `..`. `None` when a `..` would climb above the root.
fn clean_path(raw: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                out.pop()?;
            }
            c => out.push(c.to_vec()),
        }
    }
    Some(out)
}

fn join(comps: &[Vec<u8>]) -> Vec<u8> {
    comps.join(&b'/')
}

fn cstring(bytes: &[u8]) -> Option<CString> {
    CString::new(bytes).ok()
}

const OPAQUE: &[u8] = b".wh..wh..opq";
const TRUSTED_XATTR: &[u8] = b"trusted.";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const COPY_BUFFER: usize = 1 << 20;

struct Metadata {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, u32),
    xattrs: Vec<(CString, Vec<u8>)>,
}

struct Unpacker<'a> {
    root: OwnedFd,
    label: &'a str,
    cancel: Option<&'a Cancel>,
    is_root: bool,
    /// Paths this layer wrote: an opaque marker must not remove them.
    written: HashSet<Vec<u8>>,
    /// Directory mtimes, applied last (creating entries inside a directory changes it).
    dir_times: Vec<(Vec<u8>, (i64, u32))>,
    /// The last parent directory resolved. Valid until something is removed (only a
    /// removal can turn a resolved directory into something else).
    parent_cache: Option<(Vec<u8>, Rc<OwnedFd>)>,
    buffer: Vec<u8>,
    stats: UnpackStats,
    chown_warned: bool,
    budget: Option<ByteBudget>,
}

impl<'a> Unpacker<'a> {
    fn new(
        rootfs: &Path,
        label: &'a str,
        cancel: Option<&'a Cancel>,
        budget: Option<ByteBudget>,
    ) -> Result<Unpacker<'a>, FetchError> {
        let root = fsat::open_root(rootfs).map_err(|e| io_error(&format!("opening rootfs {}", rootfs.display()), e))?;
        Ok(Unpacker {
            root,
            label,
            cancel,
            is_root: fsat::is_root_user(),
            written: HashSet::new(),
            dir_times: Vec::new(),
            parent_cache: None,
            buffer: vec![0; COPY_BUFFER],
            stats: UnpackStats::default(),
            chown_warned: false,
            budget,
        })
    }

    /// Counts `n` more bytes against the image's budget; fails, before they are written, when
    /// they would pass the cap.
    fn charge(&mut self, n: u64) -> Result<(), FetchError> {
        let charged = self.stats.charged.saturating_add(n);
        if let Some(budget) = self.budget {
            if budget.used.saturating_add(charged) > budget.cap {
                return Err(FetchError::TooLarge {
                    reference: self.label.to_owned(),
                    cap: show_bytes(budget.cap),
                });
            }
        }
        self.stats.charged = charged;
        Ok(())
    }

    fn refuse(&self, entry: &[u8], reason: &str) -> FetchError {
        FetchError::Unsafe {
            reference: self.label.to_owned(),
            reason: format!("layer entry {:?} {reason}", String::from_utf8_lossy(entry)),
        }
    }

    fn entry_io(&self, entry: &[u8], what: &str, source: io::Error) -> FetchError {
        io_error(
            &format!(
                "{what} layer entry {:?} of {}",
                String::from_utf8_lossy(entry),
                self.label
            ),
            source,
        )
    }

    fn run(&mut self, reader: impl Read) -> Result<(), FetchError> {
        let mut archive = tar::Archive::new(reader);
        let entries = archive.entries().map_err(|e| io_error("reading layer", e))?;
        for entry in entries {
            if self.cancel.is_some_and(|c| c.is_cancelled()) {
                return Err(FetchError::Cancelled(self.label.to_owned()));
            }
            let entry = entry.map_err(|e| io_error("reading layer", e))?;
            self.charge(ENTRY_COST)?;
            self.entry(entry)?;
            self.stats.entries += 1;
        }
        self.apply_dir_times();
        Ok(())
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), FetchError> {
        use tar::EntryType as T;
        let raw_path = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink) {
            return Ok(());
        }
        let Some(comps) = clean_path(&raw_path) else {
            return Err(self.refuse(&raw_path, "climbs out of the rootfs with `..`"));
        };
        if comps.iter().any(|c| c.contains(&0)) {
            return Err(self.refuse(&raw_path, "contains a NUL byte"));
        }
        if comps.last().is_some_and(|c| c.starts_with(WHITEOUT_PREFIX)) {
            return self.whiteout(&raw_path, &comps);
        }
        let meta = self.metadata(&raw_path, &mut entry)?;
        let Some((name, parent_comps)) = comps.split_last() else {
            // The root itself (`./`): only a directory may describe it.
            if kind != T::Directory {
                return Err(self.refuse(&raw_path, "would replace the rootfs directory"));
            }
            let fd = fsat::open_in_root(self.root.as_fd(), c"", libc::O_RDONLY | libc::O_DIRECTORY)
                .map_err(|e| self.entry_io(&raw_path, "opening", e))?;
            self.apply_metadata(&raw_path, fd.as_fd(), &meta)?;
            self.dir_times.push((Vec::new(), meta.mtime));
            return Ok(());
        };
        let name = cstring(name).ok_or_else(|| self.refuse(&raw_path, "contains a NUL byte"))?;
        let parent = self.parent_dir(&raw_path, parent_comps)?;
        let parent = parent.as_fd();
        match kind {
            T::Regular | T::Continuous | T::GNUSparse => {
                self.make_room(&raw_path, parent, &name, false)?;
                let mut file =
                    fsat::create_file_at(parent, &name).map_err(|e| self.entry_io(&raw_path, "creating", e))?;
                self.copy_contents(&raw_path, &mut entry, &mut file)?;
                self.apply_metadata(&raw_path, file.as_fd(), &meta)?;
                fsat::futimes(file.as_fd(), meta.mtime.0, meta.mtime.1)
                    .map_err(|e| self.entry_io(&raw_path, "setting times of", e))?;
            }
            T::Directory => {
                if !self.make_room(&raw_path, parent, &name, true)? {
                    fsat::mkdir_at(parent, &name, 0o700).map_err(|e| self.entry_io(&raw_path, "creating", e))?;
                }
                let dir = fsat::open_dir_at(parent, &name).map_err(|e| self.entry_io(&raw_path, "opening", e))?;
                self.apply_metadata(&raw_path, dir.as_fd(), &meta)?;
                self.dir_times.push((join(&comps), meta.mtime));
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .ok_or_else(|| self.refuse(&raw_path, "is a symlink without a target"))?;
                let target = cstring(&target).ok_or_else(|| self.refuse(&raw_path, "has a NUL in its target"))?;
                self.make_room(&raw_path, parent, &name, false)?;
                // The target is stored verbatim: it is only ever resolved inside the rootfs
                // (by this unpacker with RESOLVE_IN_ROOT, and by the container's own root).
                fsat::symlink_at(&target, parent, &name).map_err(|e| self.entry_io(&raw_path, "creating", e))?;
                if let Err(e) = fsat::chown_at(parent, &name, meta.uid, meta.gid) {
                    self.chown_failed(&raw_path, e)?;
                }
                // Best-effort: some filesystems refuse times on symlinks.
                let _ = fsat::utimes_at(parent, &name, meta.mtime.0, meta.mtime.1);
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .ok_or_else(|| self.refuse(&raw_path, "is a hard link without a target"))?;
                self.hard_link(&raw_path, &comps, &target, parent, &name)?;
            }
            T::Char | T::Block | T::Fifo => {
                let file_type = match kind {
                    T::Char => libc::S_IFCHR,
                    T::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                if file_type != libc::S_IFIFO && !self.is_root {
                    self.stats.skipped_devices += 1;
                    self.stats.notes.push(format!(
                        "skipped device node {:?}: not running as root",
                        String::from_utf8_lossy(&raw_path)
                    ));
                    return Ok(());
                }
                let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                self.make_room(&raw_path, parent, &name, false)?;
                let dev = libc::makedev(major, minor);
                fsat::mknod_at(parent, &name, file_type | (meta.mode & 0o777), dev)
                    .map_err(|e| self.entry_io(&raw_path, "creating", e))?;
                if let Err(e) = fsat::chown_at(parent, &name, meta.uid, meta.gid) {
                    self.chown_failed(&raw_path, e)?;
                }
                // mknod's mode went through the umask; set the image's bits (after chown).
                fsat::chmod_new_node_at(parent, &name, meta.mode)
                    .map_err(|e| self.entry_io(&raw_path, "changing the mode of", e))?;
                let _ = fsat::utimes_at(parent, &name, meta.mtime.0, meta.mtime.1);
            }
            other => {
                self.stats.notes.push(format!(
                    "skipped layer entry {:?} of unsupported type {other:?}",
                    String::from_utf8_lossy(&raw_path)
                ));
                return Ok(());
            }
        }
        self.written.insert(join(&comps));
        Ok(())
    }

    fn metadata<R: Read>(&mut self, raw_path: &[u8], entry: &mut tar::Entry<'_, R>) -> Result<Metadata, FetchError> {
        let header = entry.header();
        let old = header.as_old();
        // An empty numeric field reads as 0, as in Go's archive/tar (some tools write them).
        let mode = numeric(&old.mode, header.mode().map(u64::from))
            .map_err(|e| self.entry_io(raw_path, "reading mode of", e))? as u32
            & 0o7777;
        let mut uid = numeric(&old.uid, header.uid()).map_err(|e| self.entry_io(raw_path, "reading owner of", e))?;
        let mut gid = numeric(&old.gid, header.gid()).map_err(|e| self.entry_io(raw_path, "reading group of", e))?;
        let mut mtime = (header.mtime().unwrap_or(0) as i64, 0u32);
        let mut xattrs = Vec::new();
        let mut dropped = Vec::new();
        if let Some(pax) = entry
            .pax_extensions()
            .map_err(|e| self.entry_io(raw_path, "reading", e))?
        {
            for ext in pax {
                let ext = ext.map_err(|e| self.entry_io(raw_path, "reading", e))?;
                let key = ext.key_bytes();
                let value = ext.value_bytes();
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    if name.starts_with(TRUSTED_XATTR) {
                        dropped.push(String::from_utf8_lossy(name).into_owned());
                    } else if let Some(name) = cstring(name) {
                        xattrs.push((name, value.to_vec()));
                    }
                } else if key == b"uid" {
                    uid = parse_decimal(value).unwrap_or(uid);
                } else if key == b"gid" {
                    gid = parse_decimal(value).unwrap_or(gid);
                } else if key == b"mtime" {
                    mtime = parse_pax_time(value).unwrap_or(mtime);
                }
            }
        }
        for name in dropped {
            self.stats.notes.push(format!(
                "xattr {name} of {:?} dropped: trusted.* xattrs are never taken from images",
                String::from_utf8_lossy(raw_path)
            ));
        }
        let uid = u32::try_from(uid).map_err(|_| self.refuse(raw_path, "has an owner id above 2^32"))?;
        let gid = u32::try_from(gid).map_err(|_| self.refuse(raw_path, "has a group id above 2^32"))?;
        Ok(Metadata {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        })
    }

    /// Resolves (creating as needed) the directory `comps` inside the rootfs.
    fn parent_dir(&mut self, raw_path: &[u8], comps: &[Vec<u8>]) -> Result<Rc<OwnedFd>, FetchError> {
        let key = join(comps);
        if let Some((cached, fd)) = &self.parent_cache {
            if *cached == key {
                return Ok(fd.clone());
            }
        }
        let key_c = cstring(&key).ok_or_else(|| self.refuse(raw_path, "contains a NUL byte"))?;
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        let fd = match fsat::open_in_root(self.root.as_fd(), &key_c, flags) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => self.create_parents(raw_path, comps)?,
            Err(e) => return Err(self.entry_io(raw_path, "resolving the parent directory of", e)),
        };
        let fd = Rc::new(fd);
        self.parent_cache = Some((key, fd.clone()));
        Ok(fd)
    }

    /// `mkdir -p` inside the rootfs, one component at a time, each resolved in the root.
    fn create_parents(&mut self, raw_path: &[u8], comps: &[Vec<u8>]) -> Result<OwnedFd, FetchError> {
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        let mut current = fsat::open_in_root(self.root.as_fd(), c"", flags)
            .map_err(|e| self.entry_io(raw_path, "opening the rootfs for", e))?;
        for i in 0..comps.len() {
            let prefix = cstring(&join(&comps[..=i])).ok_or_else(|| self.refuse(raw_path, "contains a NUL byte"))?;
            match fsat::open_in_root(self.root.as_fd(), &prefix, flags) {
                Ok(fd) => current = fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    let name = cstring(&comps[i]).ok_or_else(|| self.refuse(raw_path, "contains a NUL byte"))?;
                    match fsat::mkdir_at(current.as_fd(), &name, 0o755) {
                        Ok(()) => {}
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                            return Err(self.refuse(raw_path, "has a parent that is a dangling symlink"))
                        }
                        Err(e) => return Err(self.entry_io(raw_path, "creating a parent directory of", e)),
                    }
                    current = fsat::open_in_root(self.root.as_fd(), &prefix, flags)
                        .map_err(|e| self.entry_io(raw_path, "opening a parent directory of", e))?;
                }
                Err(e) => return Err(self.entry_io(raw_path, "resolving a parent directory of", e)),
            }
        }
        Ok(current)
    }

    /// Clears `name` for a new entry. Returns true when an existing directory was kept
    /// (a directory entry over a directory merges into it).
    fn make_room(
        &mut self,
        raw_path: &[u8],
        parent: BorrowedFd<'_>,
        name: &CStr,
        keep_dir: bool,
    ) -> Result<bool, FetchError> {
        match fsat::lstat_at(parent, name).map_err(|e| self.entry_io(raw_path, "inspecting", e))? {
            None => Ok(false),
            Some(st) if keep_dir && fsat::is_dir(&st) => Ok(true),
            Some(_) => {
                self.parent_cache = None;
                fsat::remove_all_at(parent, name).map_err(|e| self.entry_io(raw_path, "replacing", e))?;
                Ok(false)
            }
        }
    }

    fn copy_contents<R: Read>(
        &mut self,
        raw_path: &[u8],
        entry: &mut tar::Entry<'_, R>,
        file: &mut std::fs::File,
    ) -> Result<(), FetchError> {
        loop {
            let n = match entry.read(&mut self.buffer) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error("reading layer", e)),
            };
            self.charge(n as u64)?;
            file.write_all(&self.buffer[..n])
                .map_err(|e| self.entry_io(raw_path, "writing", e))?;
            self.stats.bytes += n as u64;
        }
    }

    fn chown_failed(&mut self, raw_path: &[u8], e: io::Error) -> Result<(), FetchError> {
        if self.is_root {
            return Err(self.entry_io(raw_path, "changing the owner of", e));
        }
        if !self.chown_warned {
            self.chown_warned = true;
            self.stats
                .notes
                .push("not running as root: file ownership from the image is not kept".to_owned());
        }
        Ok(())
    }

    /// Owner, then mode (a chown clears setuid bits), then xattrs (best-effort).
    fn apply_metadata(&mut self, raw_path: &[u8], fd: BorrowedFd<'_>, meta: &Metadata) -> Result<(), FetchError> {
        if let Err(e) = fsat::fchown(fd, meta.uid, meta.gid) {
            self.chown_failed(raw_path, e)?;
        }
        fsat::fchmod(fd, meta.mode).map_err(|e| self.entry_io(raw_path, "changing the mode of", e))?;
        for (name, value) in &meta.xattrs {
            if let Err(e) = fsat::fsetxattr(fd, name, value) {
                self.stats.notes.push(format!(
                    "xattr {} of {:?} not kept: {e}",
                    name.to_string_lossy(),
                    String::from_utf8_lossy(raw_path)
                ));
            }
        }
        Ok(())
    }

    fn hard_link(
        &mut self,
        raw_path: &[u8],
        comps: &[Vec<u8>],
        target: &[u8],
        parent: BorrowedFd<'_>,
        name: &CStr,
    ) -> Result<(), FetchError> {
        let Some(target_comps) = clean_path(target) else {
            return Err(self.refuse(raw_path, "is a hard link pointing out of the rootfs"));
        };
        let Some((target_name, target_parent)) = target_comps.split_last() else {
            return Err(self.refuse(raw_path, "is a hard link to the rootfs directory"));
        };
        if target_comps == comps {
            return Ok(());
        }
        let not_found = || self.refuse(raw_path, "is a hard link to something not inside the rootfs");
        let target_parent = cstring(&join(target_parent)).ok_or_else(not_found)?;
        let target_name = cstring(target_name).ok_or_else(not_found)?;
        let target_dir = match fsat::open_in_root(self.root.as_fd(), &target_parent, libc::O_PATH | libc::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => return Err(not_found()),
            Err(e) => return Err(self.entry_io(raw_path, "resolving the target of", e)),
        };
        match fsat::lstat_at(target_dir.as_fd(), &target_name) {
            Ok(Some(st)) if fsat::is_dir(&st) => return Err(self.refuse(raw_path, "is a hard link to a directory")),
            Ok(Some(_)) => {}
            Ok(None) => return Err(not_found()),
            Err(e) => return Err(self.entry_io(raw_path, "resolving the target of", e)),
        }
        self.make_room(raw_path, parent, name, false)?;
        fsat::link_at(target_dir.as_fd(), &target_name, parent, name)
            .map_err(|e| self.entry_io(raw_path, "creating", e))
    }

    fn whiteout(&mut self, raw_path: &[u8], comps: &[Vec<u8>]) -> Result<(), FetchError> {
        let Some((name, parent_comps)) = comps.split_last() else {
            return Ok(());
        };
        self.stats.whiteouts += 1;
        // Whatever is removed may be a directory some cached fd points into.
        self.parent_cache = None;
        let parent_key = join(parent_comps);
        let parent_c = cstring(&parent_key).ok_or_else(|| self.refuse(raw_path, "contains a NUL byte"))?;
        let parent = match fsat::open_in_root(self.root.as_fd(), &parent_c, libc::O_RDONLY | libc::O_DIRECTORY) {
            Ok(fd) => fd,
            // Nothing below to hide.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => return Ok(()),
            Err(e) => return Err(self.entry_io(raw_path, "resolving the directory of", e)),
        };
        if name.as_slice() == OPAQUE {
            let children = fsat::list_dir(parent.as_fd()).map_err(|e| self.entry_io(raw_path, "listing", e))?;
            for child in children {
                let mut child_path = parent_key.clone();
                if !child_path.is_empty() {
                    child_path.push(b'/');
                }
                child_path.extend_from_slice(child.to_bytes());
                if !self.written.contains(&child_path) {
                    fsat::remove_all_at(parent.as_fd(), &child)
                        .map_err(|e| self.entry_io(raw_path, "applying opaque marker", e))?;
                }
            }
            return Ok(());
        }
        if name.starts_with(b".wh..wh.") {
            // aufs bookkeeping (hard link directories and the like): not part of the image.
            return Ok(());
        }
        let hidden = &name[WHITEOUT_PREFIX.len()..];
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(self.refuse(raw_path, "is a whiteout of nothing"));
        }
        let hidden = cstring(hidden).ok_or_else(|| self.refuse(raw_path, "contains a NUL byte"))?;
        fsat::remove_all_at(parent.as_fd(), &hidden).map_err(|e| self.entry_io(raw_path, "applying whiteout", e))
    }

    fn apply_dir_times(&mut self) {
        let times = std::mem::take(&mut self.dir_times);
        for (path, (secs, nanos)) in times.iter().rev() {
            let Some(path) = cstring(path) else { continue };
            // O_NOFOLLOW: if a later entry replaced the directory by a symlink, leave it.
            let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
            if let Ok(fd) = fsat::open_in_root(self.root.as_fd(), &path, flags) {
                let _ = fsat::futimes(fd.as_fd(), *secs, *nanos);
            }
        }
    }
}

/// A tar numeric field: all NULs or spaces mean 0, anything else must parse.
fn numeric(field: &[u8], parsed: io::Result<u64>) -> io::Result<u64> {
    if field.iter().all(|&b| b == 0 || b == b' ') {
        return Ok(0);
    }
    parsed
}

fn parse_decimal(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// A pax time: decimal seconds with an optional fraction.
fn parse_pax_time(value: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: u32 = 0;
    for (i, c) in frac.chars().take(9).enumerate() {
        nanos += c.to_digit(10)? * 10u32.pow(8 - i as u32);
    }
    Some((secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comps(p: &str) -> Option<Vec<String>> {
        clean_path(p.as_bytes()).map(|v| v.into_iter().map(|c| String::from_utf8(c).unwrap()).collect())
    }

    #[test]
    fn clean_paths() {
        assert_eq!(comps("./a/b/").unwrap(), vec!["a", "b"]);
        assert_eq!(comps("/etc//passwd").unwrap(), vec!["etc", "passwd"]);
        assert_eq!(comps("a/../b").unwrap(), vec!["b"]);
        assert_eq!(comps("./").unwrap(), Vec::<String>::new());
        assert!(comps("../etc/passwd").is_none());
        assert!(comps("a/../../b").is_none());
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"12.5"), Some((12, 500_000_000)));
        assert_eq!(parse_pax_time(b"7"), Some((7, 0)));
        assert_eq!(parse_pax_time(b"x"), None);
    }

    fn layer_with(name: &str, data: &[u8], pax: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        if !pax.is_empty() {
            builder.append_pax_extensions(pax.iter().copied()).unwrap();
        }
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        builder.append(&h, data).unwrap();
        builder.into_inner().unwrap()
    }

    #[test]
    fn the_budget_stops_a_layer_before_the_cap() {
        let root = tempfile::tempdir().unwrap();
        let zeros = vec![0u8; 3 << 20];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&layer_with("big", &zeros, &[])).unwrap();
        let gz = gz.finish().unwrap();
        assert!(gz.len() < 64 << 10);
        let check = LayerCheck {
            budget: ByteBudget::new(1 << 20, 0),
            ..LayerCheck::default()
        };
        let err = unpack_layer_with(&gz[..], root.path(), &check, "img:bomb", None).unwrap_err();
        assert!(
            matches!(&err, FetchError::TooLarge { reference, cap } if reference == "img:bomb" && cap == "1 MiB"),
            "{err}"
        );
        let written = std::fs::metadata(root.path().join("big")).unwrap().len();
        assert!(written <= 1 << 20, "{written} bytes written past the cap");
        // Earlier layers count: what is left of the budget is what this layer may use.
        let check = LayerCheck {
            budget: ByteBudget::new(4 << 20, 2 << 20),
            ..LayerCheck::default()
        };
        let root = tempfile::tempdir().unwrap();
        assert!(matches!(
            unpack_layer_with(&gz[..], root.path(), &check, "img", None),
            Err(FetchError::TooLarge { .. })
        ));
        let check = LayerCheck {
            budget: ByteBudget::new(4 << 20, 0),
            ..LayerCheck::default()
        };
        let stats = unpack_layer_with(&gz[..], root.path(), &check, "img", None).unwrap();
        assert_eq!(stats.charged, (3 << 20) + ENTRY_COST);
        assert_eq!(ByteBudget::new(0, 5), None, "0 is no cap");
        assert_eq!(show_bytes(50 << 30), "50 GiB");
        assert_eq!(show_bytes(1000), "1000 bytes");
    }

    #[test]
    fn trusted_xattrs_are_dropped() {
        let root = tempfile::tempdir().unwrap();
        let layer = layer_with(
            "f",
            b"x",
            &[
                ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
                ("SCHILY.xattr.user.kept", b"1"),
            ],
        );
        let stats = unpack_layer(&layer[..], root.path()).unwrap();
        assert!(
            stats
                .notes
                .iter()
                .any(|n| n.contains("trusted.overlay.opaque") && n.contains("dropped")),
            "{:?}",
            stats.notes
        );
        let path = fsat::path_cstring(&root.path().join("f")).unwrap();
        let mut buf = [0u8; 16];
        // SAFETY: valid strings and buffer.
        let n = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert!(n < 0, "trusted.overlay.opaque was applied");
    }

    #[test]
    fn magic_bytes_pick_the_decompressor() {
        let tar = b"plain tar bytes".to_vec();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::stream::encode_all(&tar[..], 1).unwrap();
        for input in [&tar, &gz, &zst] {
            let mut out = Vec::new();
            decompress(&input[..]).unwrap().read_to_end(&mut out).unwrap();
            assert_eq!(out, tar);
        }
    }
}
