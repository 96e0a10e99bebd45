//! Manifests: what a `copy` step copies, computed on the host from a source directory (the build
//! context or a stage's rootfs), following OBuilder's rules (reference §3.4).
//!
//! Invariants of a computed [`Manifest`]:
//! - paths are relative to the source directory, `/`-separated, without empty, `.` or `..`
//!   segments (the context root itself is `""`), and valid UTF-8;
//! - a directory's children are sorted bytewise by path and never contain an excluded basename;
//! - symlinks are recorded, never followed; no other special file appears;
//! - `mode` is the permission part (`0o7777`) of the entry's `lstat` mode.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest, Sha256};
use strata_stores::StepId;

/// Files are hashed in chunks of this size (streaming; the whole file is never in memory).
const HASH_CHUNK: usize = 256 * 1024;

/// One entry of a copy's source tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// A regular file: `sha256` is the lowercase hex SHA-256 of its content.
    File { path: String, sha256: String, mode: u32 },
    /// A symlink and its target, as stored in the link (never resolved).
    Symlink { path: String, target: String },
    /// A directory and its (sorted, filtered) children.
    Dir {
        path: String,
        mode: u32,
        children: Vec<Manifest>,
    },
}

impl Manifest {
    pub fn path(&self) -> &str {
        match self {
            Manifest::File { path, .. } | Manifest::Symlink { path, .. } | Manifest::Dir { path, .. } => path,
        }
    }

    /// The last path segment; `"."` for the source root (so that `Copy_items` merges it into the
    /// destination directory, as OBuilder's `Filename.basename ""` does).
    pub fn basename(&self) -> &str {
        let path = self.path();
        if path.is_empty() {
            return ".";
        }
        path.rsplit('/').next().unwrap_or(path)
    }
}

/// What a `copy` step writes: OBuilder's `Copy_items` / `Copy_item` operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyOp {
    /// `dst` ended in `/`: each item goes into `dst_dir` under its basename (`.` merges).
    Items { items: Vec<Manifest>, dst_dir: String },
    /// Exactly one source, copied *as* `dst`.
    Item { item: Manifest, dst: String },
}

impl CopyOp {
    /// Chooses the operation as OBuilder does: a `dst` ending in `/` takes any number of items,
    /// otherwise there must be exactly one. `dst` is the workdir-joined destination, unnormalised.
    pub fn new(mut items: Vec<Manifest>, dst: String) -> Result<CopyOp, ManifestError> {
        if items.is_empty() {
            return Err(ManifestError::NoSources);
        }
        if dst.ends_with('/') {
            return Ok(CopyOp::Items { items, dst_dir: dst });
        }
        if items.len() > 1 {
            return Err(ManifestError::MultipleSourcesNeedDirectory { dst });
        }
        let item = items.remove(0);
        Ok(CopyOp::Item { item, dst })
    }

    pub fn items(&self) -> &[Manifest] {
        match self {
            CopyOp::Items { items, .. } => items,
            CopyOp::Item { item, .. } => std::slice::from_ref(item),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("can't use .. in source paths (in {src:?})")]
    DotDot { src: String },
    #[error("source path {src:?} not found")]
    NotFound { src: String },
    #[error("not a directory: {component} (in {src:?})")]
    NotADirectory { component: String, src: String },
    #[error("not a directory: {component} is a symlink (in {src:?})")]
    SymlinkedDirectory { component: String, src: String },
    #[error("unsupported file type for {path:?}")]
    UnsupportedFileType { path: String },
    #[error("path {path:?} is not valid UTF-8")]
    NotUtf8 { path: String },
    #[error("no source items for copy")]
    NoSources,
    #[error("when copying multiple items, the destination must end with '/' (got {dst:?})")]
    MultipleSourcesNeedDirectory { dst: String },
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> ManifestError + '_ {
    move |source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Computes the manifest of one `src` of a copy below `source_root`; entries whose basename is in
/// `exclude` are skipped at any depth below a copied directory. Regular files are hashed in
/// parallel (rayon) across directories.
pub fn compute_manifest(source_root: &Path, src: &str, exclude: &[String]) -> Result<Manifest, ManifestError> {
    let mut segments = Vec::new();
    for segment in src.split('/') {
        match segment {
            "" | "." => {}
            ".." => return Err(ManifestError::DotDot { src: src.to_owned() }),
            _ => segments.push(segment),
        }
    }
    // Every intermediate component must be a real directory: a symlink there could point
    // anywhere (outside the context, or outside a stage's rootfs).
    let mut host = source_root.to_path_buf();
    for (i, segment) in segments.iter().enumerate() {
        host.push(segment);
        let is_last = i + 1 == segments.len();
        let meta = match fs::symlink_metadata(&host) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ManifestError::NotFound { src: src.to_owned() })
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                return Err(ManifestError::NotFound { src: src.to_owned() })
            }
            Err(e) => return Err(io_error(&host)(e)),
        };
        if is_last {
            break;
        }
        let ft = meta.file_type();
        if ft.is_symlink() {
            return Err(ManifestError::SymlinkedDirectory {
                component: segment.to_string(),
                src: src.to_owned(),
            });
        }
        if !ft.is_dir() {
            return Err(ManifestError::NotADirectory {
                component: segment.to_string(),
                src: src.to_owned(),
            });
        }
    }
    let path = segments.join("/");
    if segments.is_empty() {
        // `.`: the source root itself must exist.
        fs::symlink_metadata(&host).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ManifestError::NotFound { src: src.to_owned() },
            _ => io_error(&host)(e),
        })?;
    }
    scan(&host, path, exclude)
}

/// Records `host` (already known to exist) as `path`, recursing into directories.
fn scan(host: &Path, path: String, exclude: &[String]) -> Result<Manifest, ManifestError> {
    let meta = fs::symlink_metadata(host).map_err(io_error(host))?;
    let ft = meta.file_type();
    let mode = meta.mode() & 0o7777;
    if ft.is_symlink() {
        let target = fs::read_link(host).map_err(io_error(host))?;
        let target = target
            .into_os_string()
            .into_string()
            .map_err(|t| ManifestError::NotUtf8 {
                path: format!("{} -> {}", host.display(), t.to_string_lossy()),
            })?;
        Ok(Manifest::Symlink { path, target })
    } else if ft.is_file() {
        let sha256 = hash_file(host)?;
        Ok(Manifest::File { path, sha256, mode })
    } else if ft.is_dir() {
        let mut names = Vec::new();
        for entry in fs::read_dir(host).map_err(io_error(host))? {
            let entry = entry.map_err(io_error(host))?;
            let name = entry.file_name().into_string().map_err(|n| ManifestError::NotUtf8 {
                path: host.join(n).display().to_string(),
            })?;
            if !exclude.contains(&name) {
                names.push(name);
            }
        }
        // Byte order (OCaml's String.compare); `str`'s Ord is bytewise.
        names.sort_unstable();
        let children = names
            .into_par_iter()
            .map(|name| {
                let child_path = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}/{name}")
                };
                scan(&host.join(&name), child_path, exclude)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Manifest::Dir { path, mode, children })
    } else {
        Err(ManifestError::UnsupportedFileType {
            path: host.display().to_string(),
        })
    }
}

/// SHA-256 of a regular file's content, read in chunks. The file is opened with `O_NOFOLLOW`
/// so that a file swapped for a symlink after the `lstat` is not followed.
pub fn hash_file(host: &Path) -> Result<String, ManifestError> {
    let mut file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(host)
        .map_err(io_error(host))?;
    hash_reader(&mut file).map_err(io_error(host))
}

/// Lowercase hex SHA-256 of everything `reader` yields.
pub fn hash_reader(reader: &mut impl Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_CHUNK];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
    }
    Ok(sha256_hex(hasher))
}

/// Finishes a hasher into lowercase hex (a digest does not format with `{:x}` in sha2 0.11).
pub fn sha256_hex(hasher: Sha256) -> String {
    StepId::from_digest(hasher.finalize().as_slice()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    const HELLO_SHA: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    fn context() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("file"), "hello").unwrap();
        fs::create_dir_all(root.join("dir/sub")).unwrap();
        fs::write(root.join("dir/a"), "hello").unwrap();
        fs::write(root.join("dir/sub/b"), "hello").unwrap();
        fs::create_dir(root.join("dir/.git")).unwrap();
        fs::write(root.join("dir/.git/HEAD"), "x").unwrap();
        symlink("../file", root.join("dir/link")).unwrap();
        symlink("dir", root.join("dirlink")).unwrap();
        dir
    }

    fn file(path: &str) -> Manifest {
        Manifest::File {
            path: path.into(),
            sha256: HELLO_SHA.into(),
            mode: 0o644,
        }
    }

    #[test]
    fn single_file_in_any_spelling() {
        let ctx = context();
        fs::set_permissions(ctx.path().join("file"), fs::Permissions::from_mode(0o644)).unwrap();
        for src in ["file", "./file", "/file", "//file/", "././file"] {
            assert_eq!(compute_manifest(ctx.path(), src, &[]).unwrap(), file("file"), "{src}");
        }
    }

    #[test]
    fn missing_paths() {
        let ctx = context();
        for src in ["missing", "dir/missing", "missing/file"] {
            let err = compute_manifest(ctx.path(), src, &[]).unwrap_err();
            assert_eq!(err.to_string(), format!("source path {src:?} not found"));
        }
    }

    #[test]
    fn file_in_the_middle_is_not_a_directory() {
        let ctx = context();
        let err = compute_manifest(ctx.path(), "file/file2", &[]).unwrap_err();
        assert_eq!(err.to_string(), r#"not a directory: file (in "file/file2")"#);
    }

    #[test]
    fn dot_dot_is_refused() {
        let ctx = context();
        let err = compute_manifest(ctx.path(), "dir/../file", &[]).unwrap_err();
        assert_eq!(err.to_string(), r#"can't use .. in source paths (in "dir/../file")"#);
    }

    #[test]
    fn symlink_is_recorded_not_followed() {
        let ctx = context();
        assert_eq!(
            compute_manifest(ctx.path(), "dir/link", &[]).unwrap(),
            Manifest::Symlink {
                path: "dir/link".into(),
                target: "../file".into()
            }
        );
        assert_eq!(
            compute_manifest(ctx.path(), "dirlink", &[]).unwrap(),
            Manifest::Symlink {
                path: "dirlink".into(),
                target: "dir".into()
            }
        );
    }

    #[test]
    fn symlinked_intermediate_directory_is_refused() {
        let ctx = context();
        let err = compute_manifest(ctx.path(), "dirlink/a", &[]).unwrap_err();
        assert!(matches!(err, ManifestError::SymlinkedDirectory { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            r#"not a directory: dirlink is a symlink (in "dirlink/a")"#
        );
    }

    #[test]
    fn tree_with_exclude_sorted_bytewise() {
        let ctx = context();
        for p in ["dir", "dir/sub"] {
            fs::set_permissions(ctx.path().join(p), fs::Permissions::from_mode(0o755)).unwrap();
        }
        for p in ["dir/a", "dir/sub/b"] {
            fs::set_permissions(ctx.path().join(p), fs::Permissions::from_mode(0o644)).unwrap();
        }
        let got = compute_manifest(ctx.path(), "dir", &[".git".into()]).unwrap();
        let want = Manifest::Dir {
            path: "dir".into(),
            mode: 0o755,
            children: vec![
                file("dir/a"),
                Manifest::Symlink {
                    path: "dir/link".into(),
                    target: "../file".into(),
                },
                Manifest::Dir {
                    path: "dir/sub".into(),
                    mode: 0o755,
                    children: vec![file("dir/sub/b")],
                },
            ],
        };
        assert_eq!(got, want);
        // Without the exclude, `.git` sorts first (0x2e < 0x61).
        let Manifest::Dir { children, .. } = compute_manifest(ctx.path(), "dir", &[]).unwrap() else {
            panic!()
        };
        assert_eq!(children[0].path(), "dir/.git");
    }

    #[test]
    fn dot_is_the_root_with_empty_path() {
        let ctx = context();
        let m = compute_manifest(ctx.path(), ".", &["dir".into()]).unwrap();
        let Manifest::Dir { path, children, .. } = &m else {
            panic!("{m:?}")
        };
        assert_eq!(path, "");
        assert_eq!(m.basename(), ".");
        let paths: Vec<_> = children.iter().map(Manifest::path).collect();
        assert_eq!(paths, ["dirlink", "file"]);
        assert_eq!(compute_manifest(ctx.path(), "", &["dir".into()]).unwrap(), m);
    }

    #[test]
    fn nested_directories_and_modes() {
        let ctx = tempfile::tempdir().unwrap();
        fs::create_dir_all(ctx.path().join("a/b/c")).unwrap();
        fs::write(ctx.path().join("a/b/c/run.sh"), "hello").unwrap();
        fs::set_permissions(ctx.path().join("a/b/c/run.sh"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::set_permissions(ctx.path().join("a/b"), fs::Permissions::from_mode(0o700)).unwrap();
        let m = compute_manifest(ctx.path(), "a/b", &[]).unwrap();
        let Manifest::Dir { mode, children, .. } = &m else {
            panic!()
        };
        assert_eq!(*mode, 0o700);
        let Manifest::Dir { path, children, .. } = &children[0] else {
            panic!()
        };
        assert_eq!(path, "a/b/c");
        assert_eq!(
            children[0],
            Manifest::File {
                path: "a/b/c/run.sh".into(),
                sha256: HELLO_SHA.into(),
                mode: 0o4755
            }
        );
        assert_eq!(children[0].basename(), "run.sh");
    }

    #[test]
    fn special_files_are_refused() {
        let ctx = tempfile::tempdir().unwrap();
        let fifo = ctx.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let err = compute_manifest(ctx.path(), ".", &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("unsupported file type for {:?}", fifo.display().to_string())
        );
    }

    #[test]
    fn op_choice() {
        let err = CopyOp::new(vec![], "/x/".into()).unwrap_err();
        assert_eq!(err.to_string(), "no source items for copy");
        assert!(matches!(
            CopyOp::new(vec![file("a"), file("b")], "/x/".into()).unwrap(),
            CopyOp::Items { .. }
        ));
        assert!(matches!(
            CopyOp::new(vec![file("a")], "/x".into()).unwrap(),
            CopyOp::Item { .. }
        ));
        let err = CopyOp::new(vec![file("a"), file("b")], "/x".into()).unwrap_err();
        assert!(matches!(err, ManifestError::MultipleSourcesNeedDirectory { .. }));
    }
}
