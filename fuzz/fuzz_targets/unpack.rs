//! Layer unpacking never panics and never touches anything outside the rootfs.
//!
//! Input: the first byte picks the mode. Even: the rest is one layer stream as is (plain,
//! gzip or zstd tar). Odd: the rest is decoded with `arbitrary` into up to four layers of
//! tar entries (hostile paths with `..`, absolute paths, symlinks and hard links aimed at
//! the sentinel below by relative, absolute and host paths, whiteouts, opaque markers,
//! directories, device nodes, fifos, raw type flags, pax and GNU long names, xattrs), which
//! are written as real tar streams (raw header writes, so hostile names survive) and
//! unpacked one after the other into the same rootfs.
//!
//! Each input gets a fresh directory `D` (inside a per-process base directory under
//! `$STRATA_FUZZ_TMPDIR`, default the system temp dir) holding `rootfs/` and a sentinel
//! `outside/secret`. After unpacking, `D` must hold only `rootfs` (still the same
//! directory) and `outside`; `outside` only `secret`; `D`, `outside` and `secret` must have
//! the very same metadata (ctime included, so no chmod, chown, xattr, link or rewrite) and
//! `secret` the same bytes; the base directory holds only `D`; every directory listed in
//! `$STRATA_FUZZ_WATCH` (colon-separated) keeps the entries it had at start. Errors from
//! the unpacker are refusals and fine, except `EROFS` and `EXDEV`: run under a private
//! mount namespace with `/` read-only and a tmpfs for the temp dir (see docs/fuzzing.md),
//! those mean a write or link aimed outside the rootfs's filesystem.
#![no_main]

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use strata::fetch::unpack_layer;

const SECRET: &[u8] = b"sentinel: must never change\n";
const MAX_LAYERS: usize = 4;
const MAX_ENTRIES: usize = 48;

/// Names that collide with each other and with the test layout.
const NAMES: &[&[u8]] = &[
    b"a",
    b"b",
    b"c",
    b"etc",
    b"passwd",
    b"outside",
    b"secret",
    b"rootfs",
    b"d",
    b"proc",
    b"self",
    b"root",
    b"tmp",
    b"dev",
    b"x y",
    b"\xff\xfe",
    b"..a",
    b"a..",
];

#[derive(Arbitrary, Debug)]
enum Comp {
    Name(u8),
    Dot,
    DotDot,
    Empty,
    /// `.wh.NAME`
    Whiteout(u8),
    /// `.wh..wh..opq`
    Opaque,
    /// `.wh..wh.NAME` (aufs bookkeeping)
    AufsMeta(u8),
    /// `.wh.`, `.wh..`, `.wh...`
    WhiteoutOfNothing(u8),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct PathSpec {
    absolute: bool,
    dot_slash: bool,
    comps: Vec<Comp>,
    trailing_slash: bool,
}

impl PathSpec {
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.absolute {
            out.push(b'/');
        }
        if self.dot_slash {
            out.extend_from_slice(b"./");
        }
        for (i, comp) in self.comps.iter().take(12).enumerate() {
            if i > 0 {
                out.push(b'/');
            }
            match comp {
                Comp::Name(n) => out.extend_from_slice(name(*n)),
                Comp::Dot => out.push(b'.'),
                Comp::DotDot => out.extend_from_slice(b".."),
                Comp::Empty => {}
                Comp::Whiteout(n) => {
                    out.extend_from_slice(b".wh.");
                    out.extend_from_slice(name(*n));
                }
                Comp::Opaque => out.extend_from_slice(b".wh..wh..opq"),
                Comp::AufsMeta(n) => {
                    out.extend_from_slice(b".wh..wh.");
                    out.extend_from_slice(name(*n));
                }
                Comp::WhiteoutOfNothing(n) => {
                    out.extend_from_slice(b".wh.");
                    out.extend(std::iter::repeat_n(b'.', usize::from(*n % 3)));
                }
                Comp::Raw(raw) => out.extend_from_slice(&raw[..raw.len().min(300)]),
            }
        }
        if self.trailing_slash {
            out.push(b'/');
        }
        out
    }
}

fn name(n: u8) -> &'static [u8] {
    NAMES[usize::from(n) % NAMES.len()]
}

#[derive(Arbitrary, Debug)]
enum Target {
    Path(PathSpec),
    Special(u8),
}

impl Target {
    fn bytes(&self, env: &Env) -> Vec<u8> {
        match self {
            Target::Path(p) => p.bytes(),
            Target::Special(i) => {
                let host = |p: &Path| p.as_os_str().as_bytes().to_vec();
                match i % 20 {
                    0 => b"/".to_vec(),
                    1 => b"..".to_vec(),
                    2 => b"../outside/secret".to_vec(),
                    3 => b"../../outside/secret".to_vec(),
                    4 => b"../outside".to_vec(),
                    5 => b"/../outside/secret".to_vec(),
                    6 => host(&env.secret),
                    7 => host(&env.outside),
                    8 => host(&env.d),
                    9 => host(&env.base),
                    10 => b"/proc/self/root".to_vec(),
                    11 => b"/proc/self/cwd".to_vec(),
                    12 => b"/proc/self/fd/3".to_vec(),
                    13 => b"/tmp".to_vec(),
                    14 => b"/dev/shm".to_vec(),
                    15 => b"../../../../../../../..".to_vec(),
                    16 => b"a/../../outside/secret".to_vec(),
                    17 => b"/rootfs/../outside".to_vec(),
                    18 => b"".to_vec(),
                    _ => b".".to_vec(),
                }
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(Target),
    HardLink(Target),
    Char {
        major: u8,
        minor: u8,
    },
    Block {
        major: u8,
        minor: u8,
    },
    Fifo,
    /// Any type flag (pax `x`/`g`, GNU `L`/`K`, sparse `S`, unknown ones), with content.
    Other(u8, Vec<u8>),
}

/// Where a name goes: the header field (cut at 100 bytes), a pax record, a GNU long-name entry.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Encoding {
    Header,
    Pax,
    Gnu,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Format {
    Gnu,
    Ustar,
    Old,
}

#[derive(Arbitrary, Debug)]
enum PaxRecord {
    Xattr(u8, Vec<u8>),
    Uid(u64),
    Gid(u64),
    Mtime(String),
    Raw(Vec<u8>, Vec<u8>),
}

const XATTRS: &[&[u8]] = &[
    b"user.a",
    b"user.",
    b"security.capability",
    b"security.selinux",
    b"trusted.overlay.opaque",
    b"system.posix_acl_access",
    b"",
];

#[derive(Arbitrary, Debug)]
struct EntrySpec {
    path: PathSpec,
    kind: Kind,
    name_encoding: Encoding,
    link_encoding: Encoding,
    format: Format,
    mode: u16,
    uid: u16,
    gid: u16,
    mtime: u32,
    pax: Vec<PaxRecord>,
}

#[derive(Arbitrary, Debug)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Arbitrary, Debug)]
enum End {
    TwoZeroBlocks,
    Nothing,
    Garbage(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct LayerSpec {
    entries: Vec<EntrySpec>,
    compression: Compression,
    end: End,
}

fn pad(out: &mut Vec<u8>) {
    let rem = out.len() % 512;
    if rem != 0 {
        out.extend(std::iter::repeat_n(0u8, 512 - rem));
    }
}

fn push_entry(out: &mut Vec<u8>, header: &tar::Header, data: &[u8]) {
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    pad(out);
}

fn new_header(format: Format) -> tar::Header {
    match format {
        Format::Gnu => tar::Header::new_gnu(),
        Format::Ustar => tar::Header::new_ustar(),
        Format::Old => tar::Header::new_old(),
    }
}

/// A header carrying `data` under a fixed, harmless name (pax and GNU long-name entries).
fn meta_header(format: Format, flag: u8, name: &[u8], size: usize) -> tar::Header {
    let mut h = new_header(format);
    h.set_entry_type(tar::EntryType::new(flag));
    h.set_size(size as u64);
    h.set_mode(0o644);
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_cksum();
    h
}

fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    // "LEN key=value\n", LEN counting its own digits.
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    while base + len.to_string().len() != len {
        len = base + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn write_entry(out: &mut Vec<u8>, entry: &EntrySpec, env: &Env) {
    use tar::EntryType as T;
    let path = entry.path.bytes();
    let (flag, data, link): (T, &[u8], Option<Vec<u8>>) = match &entry.kind {
        Kind::File(content) => (T::Regular, content, None),
        Kind::Dir => (T::Directory, &[], None),
        Kind::Symlink(t) => (T::Symlink, &[], Some(t.bytes(env))),
        Kind::HardLink(t) => (T::Link, &[], Some(t.bytes(env))),
        Kind::Char { .. } => (T::Char, &[], None),
        Kind::Block { .. } => (T::Block, &[], None),
        Kind::Fifo => (T::Fifo, &[], None),
        Kind::Other(flag, content) => (T::new(*flag), content, None),
    };

    let mut pax = Vec::new();
    for record in entry.pax.iter().take(6) {
        match record {
            PaxRecord::Xattr(n, value) => {
                let mut key = b"SCHILY.xattr.".to_vec();
                key.extend_from_slice(XATTRS[usize::from(*n) % XATTRS.len()]);
                pax_record(&mut pax, &key, value);
            }
            PaxRecord::Uid(v) => pax_record(&mut pax, b"uid", v.to_string().as_bytes()),
            PaxRecord::Gid(v) => pax_record(&mut pax, b"gid", v.to_string().as_bytes()),
            PaxRecord::Mtime(v) => pax_record(&mut pax, b"mtime", v.as_bytes()),
            PaxRecord::Raw(k, v) => pax_record(&mut pax, k, v),
        }
    }
    if matches!(entry.name_encoding, Encoding::Pax) {
        pax_record(&mut pax, b"path", &path);
    }
    if let (Some(link), Encoding::Pax) = (&link, entry.link_encoding) {
        pax_record(&mut pax, b"linkpath", link);
    }
    if !pax.is_empty() {
        push_entry(out, &meta_header(entry.format, b'x', b"PaxHeaders/x", pax.len()), &pax);
    }
    if matches!(entry.name_encoding, Encoding::Gnu) {
        let mut long = path.clone();
        long.push(0);
        push_entry(
            out,
            &meta_header(entry.format, b'L', b"././@LongLink", long.len()),
            &long,
        );
    }
    if let (Some(link), Encoding::Gnu) = (&link, entry.link_encoding) {
        let mut long = link.clone();
        long.push(0);
        push_entry(
            out,
            &meta_header(entry.format, b'K', b"././@LongLink", long.len()),
            &long,
        );
    }

    let mut h = new_header(entry.format);
    h.set_entry_type(flag);
    h.set_size(data.len() as u64);
    h.set_mode(u32::from(entry.mode) & 0o7777);
    h.set_uid(u64::from(entry.uid));
    h.set_gid(u64::from(entry.gid));
    h.set_mtime(u64::from(entry.mtime));
    if let Kind::Char { major, minor } | Kind::Block { major, minor } = entry.kind {
        // Old (v7) headers have no device fields: that is one more case to see.
        let _ = h.set_device_major(u32::from(major));
        let _ = h.set_device_minor(u32::from(minor));
    }
    // Raw writes: `set_path`/`set_link_name` would refuse the hostile names.
    let name_field = &mut h.as_old_mut().name;
    let n = path.len().min(name_field.len());
    name_field[..n].copy_from_slice(&path[..n]);
    if let Some(link) = &link {
        let link_field = &mut h.as_old_mut().linkname;
        let n = link.len().min(link_field.len());
        link_field[..n].copy_from_slice(&link[..n]);
    }
    h.set_cksum();
    push_entry(out, &h, data);
}

fn build_layer(layer: &LayerSpec, env: &Env) -> Vec<u8> {
    let mut tar = Vec::new();
    for entry in layer.entries.iter().take(MAX_ENTRIES) {
        write_entry(&mut tar, entry, env);
    }
    match &layer.end {
        End::TwoZeroBlocks => tar.extend(std::iter::repeat_n(0u8, 1024)),
        End::Nothing => {}
        End::Garbage(g) => tar.extend_from_slice(g),
    }
    match layer.compression {
        Compression::None => tar,
        Compression::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar).unwrap();
            gz.finish().unwrap()
        }
        Compression::Zstd => zstd::stream::encode_all(&tar[..], 1).unwrap(),
    }
}

struct Env {
    base: PathBuf,
    d: PathBuf,
    rootfs: PathBuf,
    outside: PathBuf,
    secret: PathBuf,
    watch: Vec<(PathBuf, BTreeSet<OsString>)>,
}

fn listing(dir: &Path) -> BTreeSet<OsString> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name())
        .collect()
}

static BASE: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_base() {
    if let Some(base) = BASE.get() {
        let _ = fs::remove_dir_all(base);
    }
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let tmp = std::env::var_os("STRATA_FUZZ_TMPDIR").map_or_else(std::env::temp_dir, PathBuf::from);
        let base = tempfile::Builder::new()
            .prefix("strata-fuzz-unpack.")
            .tempdir_in(&tmp)
            .expect("creating the base directory")
            .keep();
        BASE.set(base.clone()).unwrap();
        // SAFETY: registers a plain function; libFuzzer ends runs with exit().
        unsafe { libc::atexit(remove_base) };
        let watch = std::env::var_os("STRATA_FUZZ_WATCH")
            .map(|w| {
                std::env::split_paths(&w)
                    .filter(|p| !p.as_os_str().is_empty())
                    .map(|p| {
                        let l = listing(&p);
                        (p, l)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let d = base.join("d");
        Env {
            rootfs: d.join("rootfs"),
            outside: d.join("outside"),
            secret: d.join("outside/secret"),
            d,
            base,
            watch,
        }
    })
}

/// Everything about an inode except its access time.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    dev: u64,
    ino: u64,
    mode: u32,
    nlink: u64,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn lstat(p: &Path) -> Stat {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("ESCAPE? lstat {}: {e}", p.display()));
    Stat {
        dev: m.dev(),
        ino: m.ino(),
        mode: m.mode(),
        nlink: m.nlink(),
        uid: m.uid(),
        gid: m.gid(),
        size: m.size(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    }
}

struct Before {
    d: Stat,
    rootfs_ino: u64,
    outside: Stat,
    secret: Stat,
}

fn setup(env: &Env) -> Before {
    fs::create_dir(&env.d).unwrap();
    fs::create_dir(&env.rootfs).unwrap();
    fs::create_dir(&env.outside).unwrap();
    fs::write(&env.secret, SECRET).unwrap();
    fs::set_permissions(&env.secret, fs::Permissions::from_mode(0o644)).unwrap();
    Before {
        d: lstat(&env.d),
        rootfs_ino: lstat(&env.rootfs).ino,
        outside: lstat(&env.outside),
        secret: lstat(&env.secret),
    }
}

fn set(names: &[&str]) -> BTreeSet<OsString> {
    names.iter().map(OsString::from).collect()
}

fn check(env: &Env, before: &Before, what: &str) {
    assert_eq!(
        listing(&env.base),
        set(&["d"]),
        "ESCAPE: the base directory changed ({what})"
    );
    assert_eq!(
        listing(&env.d),
        set(&["outside", "rootfs"]),
        "ESCAPE: D changed ({what})"
    );
    assert_eq!(lstat(&env.d), before.d, "ESCAPE: D's metadata changed ({what})");
    let rootfs = fs::symlink_metadata(&env.rootfs).unwrap();
    assert!(rootfs.is_dir(), "ESCAPE: the rootfs is no longer a directory ({what})");
    assert_eq!(
        rootfs.ino(),
        before.rootfs_ino,
        "ESCAPE: the rootfs was replaced ({what})"
    );
    assert_eq!(
        listing(&env.outside),
        set(&["secret"]),
        "ESCAPE: outside/ changed ({what})"
    );
    assert_eq!(
        lstat(&env.outside),
        before.outside,
        "ESCAPE: outside/'s metadata changed ({what})"
    );
    assert_eq!(
        lstat(&env.secret),
        before.secret,
        "ESCAPE: the sentinel's metadata changed ({what})"
    );
    assert_eq!(
        fs::read(&env.secret).unwrap(),
        SECRET,
        "ESCAPE: the sentinel's content changed ({what})"
    );
    for (dir, entries) in &env.watch {
        assert_eq!(
            &listing(dir),
            entries,
            "ESCAPE: watched {} changed ({what})",
            dir.display()
        );
    }
}

/// EROFS or EXDEV: with the rootfs on a writable tmpfs and `/` read-only, the unpacker
/// tried to write or link outside the rootfs's filesystem.
fn assert_no_foreign_fs(text: &str, what: &str) {
    assert!(
        !text.contains("(os error 30)") && !text.contains("(os error 18)"),
        "ESCAPE: write or link outside the rootfs's filesystem ({what}): {text}"
    );
}

fn unpack(env: &Env, layer: &[u8], what: &str) {
    match unpack_layer(layer, &env.rootfs) {
        Ok(stats) => {
            for note in &stats.notes {
                assert_no_foreign_fs(note, what);
            }
        }
        Err(e) => assert_no_foreign_fs(&e.to_string(), what),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let env = env();
    let layers: Vec<Vec<u8>> = if mode & 1 == 0 {
        vec![rest.to_vec()]
    } else {
        let Ok(specs) = Vec::<LayerSpec>::arbitrary_take_rest(Unstructured::new(rest)) else {
            return;
        };
        specs.iter().take(MAX_LAYERS).map(|l| build_layer(l, env)).collect()
    };
    let before = setup(env);
    for (i, layer) in layers.iter().enumerate() {
        let what = format!("after layer {i}");
        unpack(env, layer, &what);
        check(env, &before, &what);
    }
    fs::remove_dir_all(&env.d).unwrap_or_else(|e| panic!("cleaning {}: {e}", env.d.display()));
});
