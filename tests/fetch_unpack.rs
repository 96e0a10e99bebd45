//! Layer unpacking against hostile and tricky tar streams: nothing may land outside the
//! rootfs (`..` entries, absolute symlinks written through, hard links to host files),
//! whiteouts and opaque directories apply, metadata is kept.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use strata::fetch::{unpack_layer, FetchError};

/// A tar stream built entry by entry, with raw names (tar::Builder would refuse `..`).
struct Layer {
    builder: tar::Builder<Vec<u8>>,
}

impl Layer {
    fn new() -> Layer {
        Layer {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(name: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        let bytes = name.as_bytes();
        assert!(bytes.len() < 100, "keep test names short");
        h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h
    }

    fn finish_header(&mut self, mut h: tar::Header, data: &[u8]) {
        h.set_cksum();
        self.builder.append(&h, data).unwrap();
    }

    fn file(mut self, name: &str, data: &[u8]) -> Layer {
        let h = Layer::header(name, tar::EntryType::Regular, 0o644, data.len() as u64);
        self.finish_header(h, data);
        self
    }

    fn file_with(mut self, name: &str, data: &[u8], mode: u32, uid: u64, gid: u64, mtime: u64) -> Layer {
        let mut h = Layer::header(name, tar::EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(mtime);
        self.finish_header(h, data);
        self
    }

    fn dir(mut self, name: &str, mode: u32) -> Layer {
        let h = Layer::header(name, tar::EntryType::Directory, mode, 0);
        self.finish_header(h, &[]);
        self
    }

    fn link(mut self, kind: tar::EntryType, name: &str, target: &str) -> Layer {
        let mut h = Layer::header(name, kind, 0o777, 0);
        let t = target.as_bytes();
        assert!(t.len() < 100);
        h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
        self.finish_header(h, &[]);
        self
    }

    fn symlink(self, name: &str, target: &str) -> Layer {
        self.link(tar::EntryType::Symlink, name, target)
    }

    fn hardlink(self, name: &str, target: &str) -> Layer {
        self.link(tar::EntryType::Link, name, target)
    }

    fn device(mut self, name: &str, kind: tar::EntryType, major: u32, minor: u32) -> Layer {
        let mut h = Layer::header(name, kind, 0o666, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.finish_header(h, &[]);
        self
    }

    fn xattr_file(mut self, name: &str, data: &[u8], key: &str, value: &[u8]) -> Layer {
        let key = format!("SCHILY.xattr.{key}");
        self.builder.append_pax_extensions([(key.as_str(), value)]).unwrap();
        self.file(name, data)
    }

    fn bytes(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }
}

/// `base/` holds sentinel files next to `base/root/rootfs`; `outside()` lists everything
/// under `base` except the rootfs, to prove nothing was written there.
struct Sandbox {
    base: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let base = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(base.path().join("root/rootfs")).unwrap();
        std::fs::write(base.path().join("victim"), "original").unwrap();
        std::fs::write(base.path().join("root/victim"), "original").unwrap();
        Sandbox { base }
    }

    fn rootfs(&self) -> PathBuf {
        self.base.path().join("root/rootfs")
    }

    fn outside(&self) -> BTreeMap<PathBuf, (u64, Vec<u8>)> {
        let mut out = BTreeMap::new();
        walk(self.base.path(), &self.rootfs(), &mut out);
        out
    }

    fn unpack(&self, layer: Vec<u8>) -> Result<strata::fetch::UnpackStats, FetchError> {
        unpack_layer(&layer[..], &self.rootfs())
    }
}

fn walk(dir: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, (u64, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path == skip {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let content = if meta.is_file() {
            std::fs::read(&path).unwrap()
        } else {
            Vec::new()
        };
        out.insert(path.clone(), (meta.nlink(), content));
        if meta.is_dir() {
            walk(&path, skip, out);
        }
    }
}

fn host_file_state(path: &str) -> (u64, u64, Vec<u8>) {
    let meta = std::fs::symlink_metadata(path).unwrap();
    (meta.ino(), meta.nlink(), std::fs::read(path).unwrap_or_default())
}

fn assert_unsafe(result: Result<strata::fetch::UnpackStats, FetchError>, entry: &str) {
    match result {
        Err(FetchError::Unsafe { reason, .. }) => assert!(reason.contains(entry), "{reason} does not name {entry}"),
        other => panic!("expected the layer to be refused naming {entry}, got {other:?}"),
    }
}

#[test]
fn dotdot_entries_are_refused() {
    for name in ["../victim", "../../victim", "a/../../victim", "./../root/victim"] {
        let sb = Sandbox::new();
        let before = sb.outside();
        let layer = Layer::new().file("ok", b"fine").file(name, b"pwned").bytes();
        assert_unsafe(sb.unpack(layer), name);
        assert_eq!(before, sb.outside(), "{name} wrote outside the rootfs");
    }
}

#[test]
fn dotdot_that_stays_inside_is_applied_in_place() {
    let sb = Sandbox::new();
    let before = sb.outside();
    sb.unpack(Layer::new().dir("a", 0o755).file("a/../b", b"x").bytes())
        .unwrap();
    assert_eq!(std::fs::read(sb.rootfs().join("b")).unwrap(), b"x");
    assert_eq!(before, sb.outside());
}

#[test]
fn absolute_paths_are_taken_inside_the_rootfs() {
    let sb = Sandbox::new();
    let before = sb.outside();
    let name = format!("/tmp/strata-escape-{}", std::process::id());
    sb.unpack(Layer::new().file(&name, b"inside").bytes()).unwrap();
    assert!(!Path::new(&name).exists(), "{name} written on the host");
    assert_eq!(
        std::fs::read(sb.rootfs().join(name.trim_start_matches('/'))).unwrap(),
        b"inside"
    );
    assert_eq!(before, sb.outside());
}

#[test]
fn writes_through_an_absolute_symlink_stay_inside() {
    let sb = Sandbox::new();
    let before = sb.outside();
    let host_passwd = host_file_state("/etc/passwd");
    // `etc` is a real directory of the image; `hostetc -> /etc` must mean the image's /etc.
    let layer = Layer::new()
        .dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
        .symlink("hostetc", "/etc")
        .file("hostetc/passwd", b"pwned\n")
        .file("hostetc/newfile", b"new\n")
        .bytes();
    sb.unpack(layer).unwrap();
    assert_eq!(std::fs::read(sb.rootfs().join("etc/passwd")).unwrap(), b"pwned\n");
    assert_eq!(std::fs::read(sb.rootfs().join("etc/newfile")).unwrap(), b"new\n");
    assert_eq!(
        std::fs::read_link(sb.rootfs().join("hostetc")).unwrap(),
        Path::new("/etc")
    );
    assert_eq!(host_passwd, host_file_state("/etc/passwd"), "host /etc/passwd changed");
    assert!(!Path::new("/etc/newfile").exists());
    assert_eq!(before, sb.outside());
}

#[test]
fn symlink_to_the_real_outside_path_is_refused_or_contained() {
    let sb = Sandbox::new();
    let before = sb.outside();
    // An absolute symlink to the sandbox's real directory, and a relative one climbing out.
    let target = sb.base.path().display().to_string();
    let layer = Layer::new()
        .symlink("evil", &target)
        .file("evil/victim", b"pwned")
        .bytes();
    let result = sb.unpack(layer);
    if let Err(e) = &result {
        assert!(matches!(e, FetchError::Unsafe { .. }), "{e}");
    }
    let layer = Layer::new()
        .symlink("up", "../../../../../../..")
        .file("up/victim", b"contained")
        .bytes();
    sb.unpack(layer).unwrap();
    // `up` resolves to the rootfs itself.
    assert_eq!(std::fs::read(sb.rootfs().join("victim")).unwrap(), b"contained");
    assert_eq!(before, sb.outside(), "a symlink led a write out of the rootfs");
}

#[test]
fn symlinked_parent_chain_stays_inside() {
    let sb = Sandbox::new();
    let before = sb.outside();
    let layer = Layer::new()
        .dir("usr", 0o755)
        .dir("usr/lib", 0o755)
        .symlink("lib", "usr/lib")
        .symlink("usr/lib/up", "../../..")
        .file("lib/up/victim", b"contained")
        .file("lib/libc.so", b"elf")
        .bytes();
    sb.unpack(layer).unwrap();
    assert_eq!(std::fs::read(sb.rootfs().join("usr/lib/libc.so")).unwrap(), b"elf");
    assert_eq!(std::fs::read(sb.rootfs().join("victim")).unwrap(), b"contained");
    assert_eq!(before, sb.outside());
}

#[test]
fn hard_links_to_host_files_are_refused() {
    let hostname = host_file_state("/etc/hostname");
    for (target, name) in [
        ("/etc/hostname", "hl-abs"),
        ("../../etc/hostname", "hl-up"),
        ("evil/hostname", "hl-via-symlink"),
    ] {
        let sb = Sandbox::new();
        let before = sb.outside();
        let layer = Layer::new().symlink("evil", "/etc").hardlink(name, target).bytes();
        assert_unsafe(sb.unpack(layer), name);
        assert_eq!(before, sb.outside());
        assert_eq!(
            hostname,
            host_file_state("/etc/hostname"),
            "host /etc/hostname gained a link"
        );
    }
    // A hard link to the image's own /etc/hostname links inside the rootfs.
    let sb = Sandbox::new();
    let layer = Layer::new()
        .dir("etc", 0o755)
        .file("etc/hostname", b"image\n")
        .hardlink("hl", "/etc/hostname")
        .bytes();
    sb.unpack(layer).unwrap();
    let inner = std::fs::metadata(sb.rootfs().join("etc/hostname")).unwrap();
    let link = std::fs::metadata(sb.rootfs().join("hl")).unwrap();
    assert_eq!(inner.ino(), link.ino());
    assert_eq!(inner.nlink(), 2);
    assert_eq!(hostname, host_file_state("/etc/hostname"));
}

#[test]
fn whiteouts_and_opaque_directories() {
    let sb = Sandbox::new();
    let lower = Layer::new()
        .dir("a", 0o755)
        .file("a/file1", b"1")
        .file("a/file2", b"2")
        .dir("b", 0o755)
        .file("b/x", b"x")
        .dir("c", 0o755)
        .file("c/old", b"old")
        .dir("c/sub", 0o755)
        .file("c/sub/deep", b"deep")
        .bytes();
    sb.unpack(lower).unwrap();
    let upper = Layer::new()
        .file("a/.wh.file1", b"")
        .file(".wh.b", b"")
        .file("c/new", b"new")
        .file("c/.wh..wh..opq", b"")
        .file("c/after", b"after")
        .file("nodir/.wh.nothing", b"")
        .bytes();
    let stats = sb.unpack(upper).unwrap();
    assert_eq!(
        stats.whiteouts, 4,
        "whiteout entries seen, the one under a missing dir included"
    );
    let root = sb.rootfs();
    assert!(!root.join("a/file1").exists());
    assert!(root.join("a/file2").exists());
    assert!(!root.join("b").exists());
    let mut c: Vec<String> = std::fs::read_dir(root.join("c"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    c.sort();
    assert_eq!(c, vec!["after", "new"], "opaque dir keeps only this layer's entries");
    // Whiteout markers are never materialised.
    assert!(!root.join("a/.wh.file1").exists());
    assert!(!root.join(".wh.b").exists());
    assert!(!root.join("c/.wh..wh..opq").exists());
    assert!(!root.join("nodir").exists());
}

#[test]
fn whiteout_through_a_symlink_cannot_delete_host_files() {
    let sb = Sandbox::new();
    let before = sb.outside();
    let target = sb.base.path().display().to_string();
    let layer = Layer::new()
        .symlink("evil", &target)
        .file("evil/.wh.victim", b"")
        .file("evil/.wh..wh..opq", b"")
        .bytes();
    let _ = sb.unpack(layer);
    assert_eq!(before, sb.outside(), "a whiteout removed a file outside the rootfs");
}

#[test]
fn metadata_is_kept() {
    let sb = Sandbox::new();
    let layer = Layer::new()
        .dir("d", 0o700)
        .file_with("d/suid", b"#!/bin/sh\n", 0o4755, 1234, 5678, 1_500_000_000)
        .xattr_file("xattr", b"x", "user.strata", b"kept")
        .device("null", tar::EntryType::Char, 1, 3)
        .device("fifo", tar::EntryType::Fifo, 0, 0)
        .bytes();
    sb.unpack(layer).unwrap();
    let root = sb.rootfs();
    let suid = std::fs::metadata(root.join("d/suid")).unwrap();
    assert_eq!(suid.permissions().mode() & 0o7777, 0o4755);
    assert_eq!((suid.uid(), suid.gid()), (1234, 5678));
    assert_eq!(suid.mtime(), 1_500_000_000);
    let d = std::fs::metadata(root.join("d")).unwrap();
    assert_eq!(d.permissions().mode() & 0o7777, 0o700);
    assert_eq!(d.mtime(), 1_600_000_000, "directory mtime restored after its children");
    // xattrs are best-effort: required only where the filesystem takes user xattrs.
    if xattr_supported(&root) {
        assert_eq!(
            xattr_get(&root.join("xattr"), "user.strata").as_deref(),
            Some(&b"kept"[..])
        );
    }
    let null = std::fs::symlink_metadata(root.join("null")).unwrap();
    if strata_testkit::is_root() {
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), libc::makedev(1, 3));
    }
    assert!(std::fs::symlink_metadata(root.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
}

fn xattr_supported(dir: &Path) -> bool {
    let probe = dir.join(".xattr-probe");
    std::fs::write(&probe, b"").unwrap();
    let p = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid C strings and buffer.
    let ok = unsafe { libc::setxattr(p.as_ptr(), c"user.probe".as_ptr(), b"1".as_ptr().cast(), 1, 0) } == 0;
    std::fs::remove_file(&probe).unwrap();
    ok
}

fn xattr_get(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and buffer.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return None;
    }
    buf.truncate(len as usize);
    Some(buf)
}

#[test]
fn replacing_entries_never_follows_the_old_one() {
    let sb = Sandbox::new();
    let before = sb.outside();
    let target = sb.base.path().display().to_string();
    sb.unpack(
        Layer::new()
            .dir("x", 0o755)
            .file("x/inner", b"i")
            .symlink("y", &target)
            .bytes(),
    )
    .unwrap();
    // A file over a directory, a directory over a symlink, a file over a symlink.
    sb.unpack(
        Layer::new()
            .file("x", b"now a file")
            .dir("y", 0o755)
            .symlink("z", &format!("{target}/victim"))
            .file("z", b"replaced")
            .bytes(),
    )
    .unwrap();
    let root = sb.rootfs();
    assert_eq!(std::fs::read(root.join("x")).unwrap(), b"now a file");
    assert!(std::fs::symlink_metadata(root.join("y")).unwrap().is_dir());
    assert_eq!(std::fs::read(root.join("z")).unwrap(), b"replaced");
    assert_eq!(before, sb.outside());
}

#[test]
fn compressed_layers() {
    let tar = Layer::new().file("hello", b"world").bytes();
    let gz = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&tar).unwrap();
        e.finish().unwrap()
    };
    let zst = zstd::stream::encode_all(&tar[..], 3).unwrap();
    for layer in [tar.clone(), gz, zst] {
        let sb = Sandbox::new();
        sb.unpack(layer).unwrap();
        assert_eq!(std::fs::read(sb.rootfs().join("hello")).unwrap(), b"world");
    }
    // Garbage is an error, not an empty layer.
    let sb = Sandbox::new();
    assert!(sb
        .unpack(b"this is not a tar stream at all, not even close..".repeat(20))
        .is_err());
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn component() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["a", "b", "..", ".", "", "victim", "root", "rootfs", "etc"])
    }

    fn path() -> impl Strategy<Value = String> {
        (any::<bool>(), prop::collection::vec(component(), 1..5)).prop_map(|(abs, comps)| {
            let p = comps.join("/");
            if abs {
                format!("/{p}")
            } else {
                p
            }
        })
    }

    #[derive(Debug, Clone)]
    enum Op {
        File(String),
        Dir(String),
        Symlink(String, String),
        Hardlink(String, String),
        Whiteout(String),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            path().prop_map(Op::File),
            path().prop_map(Op::Dir),
            (path(), path()).prop_map(|(a, b)| Op::Symlink(a, b)),
            (path(), path()).prop_map(|(a, b)| Op::Hardlink(a, b)),
            path().prop_map(Op::Whiteout),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
        #[test]
        fn nothing_lands_outside(ops in prop::collection::vec(op(), 1..12)) {
            let sb = Sandbox::new();
            let before = sb.outside();
            let mut layer = Layer::new();
            for op in &ops {
                layer = match op {
                    Op::File(p) if !p.is_empty() => layer.file(p, b"pwned"),
                    Op::Dir(p) if !p.is_empty() => layer.dir(p, 0o755),
                    Op::Symlink(p, t) if !p.is_empty() => layer.symlink(p, t),
                    Op::Hardlink(p, t) if !p.is_empty() => layer.hardlink(p, t),
                    Op::Whiteout(p) => layer.file(&format!("{p}/.wh.victim"), b""),
                    _ => layer,
                };
            }
            let _ = sb.unpack(layer.bytes());
            prop_assert_eq!(before, sb.outside());
        }
    }
}
