//! Context copies executed for real into a temporary rootfs (as root: ownership is checked).

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use strata::builder::copy::{execute_copy, plan_copy, CopyError, CopyStats};
use strata::key::{copy_id, CopyOp, IdScheme};
use strata::spec::ast::{Copy, CopyFrom, User};
use strata::stores::StepId;

fn copy(src: &[&str], dst: &str, exclude: &[&str]) -> Copy {
    Copy {
        from: CopyFrom::Context,
        src: src.iter().map(|s| s.to_string()).collect(),
        dst: dst.to_string(),
        exclude: exclude.iter().map(|s| s.to_string()).collect(),
    }
}

fn write(path: &Path, content: &str, mode: u32) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

fn owner(path: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(path).unwrap();
    (m.uid(), m.gid())
}

fn run(ctx: &Path, rootfs: &Path, spec: &Copy, workdir: &str) -> Result<CopyStats, CopyError> {
    let plan = plan_copy(ctx, spec, workdir)?;
    execute_copy(&plan, ctx, rootfs, 1000, 1000)
}

fn require_root() -> bool {
    if !strata_testkit::is_root() {
        eprintln!("skipping: needs root to chown");
        return false;
    }
    true
}

/// A context with a plain file, an executable, a setuid file and a nested private directory.
fn context() -> tempfile::TempDir {
    let ctx = tempfile::tempdir().unwrap();
    let c = ctx.path();
    write(&c.join("a.txt"), "plain", 0o644);
    write(&c.join("run.sh"), "#!/bin/sh\n", 0o755);
    write(&c.join("suid"), "s", 0o4755);
    write(&c.join("sub/deep/f"), "deep", 0o600);
    chmod(&c.join("sub"), 0o750);
    chmod(&c.join("sub/deep"), 0o555);
    symlink("/etc/passwd", c.join("passwd")).unwrap();
    write(&c.join(".git/HEAD"), "ref", 0o644);
    chmod(c, 0o700);
    ctx
}

#[test]
fn ownership_modes_and_missing_parents() {
    if !require_root() {
        return;
    }
    let ctx = context();
    let rootfs = tempfile::tempdir().unwrap();
    let r = rootfs.path();
    let stats = run(
        ctx.path(),
        r,
        &copy(&["a.txt", "run.sh", "suid", "sub"], "/opt/app/", &[]),
        "/",
    )
    .unwrap();
    assert_eq!(
        stats,
        CopyStats {
            files: 4,
            bytes: 5 + 10 + 1 + 4,
            dirs: 4,
            symlinks: 0
        }
    );
    for parent in ["opt", "opt/app"] {
        assert_eq!(mode(&r.join(parent)), 0o755, "{parent}");
        assert_eq!(owner(&r.join(parent)), (1000, 1000), "{parent}");
    }
    for (path, want) in [
        ("a.txt", 0o644),
        ("run.sh", 0o755),
        ("suid", 0o4755),
        ("sub", 0o750),
        ("sub/deep", 0o555),
        ("sub/deep/f", 0o600),
    ] {
        let p = r.join("opt/app").join(path);
        assert_eq!(mode(&p), want, "{path}");
        assert_eq!(owner(&p), (1000, 1000), "{path}");
    }
    assert_eq!(fs::read_to_string(r.join("opt/app/sub/deep/f")).unwrap(), "deep");
    assert_eq!(fs::read_to_string(r.join("opt/app/a.txt")).unwrap(), "plain");
}

#[test]
fn existing_parents_are_left_alone() {
    if !require_root() {
        return;
    }
    let ctx = context();
    let rootfs = tempfile::tempdir().unwrap();
    let r = rootfs.path();
    fs::create_dir_all(r.join("etc/app")).unwrap();
    chmod(&r.join("etc"), 0o751);
    chmod(&r.join("etc/app"), 0o711);
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(946_684_800);
    fs::File::open(r.join("etc")).unwrap().set_modified(old).unwrap();
    let before = fs::metadata(r.join("etc")).unwrap();

    run(ctx.path(), r, &copy(&["a.txt"], "app/conf", &[]), "/etc").unwrap();
    assert_eq!(fs::read_to_string(r.join("etc/app/conf")).unwrap(), "plain");
    assert_eq!(owner(&r.join("etc/app/conf")), (1000, 1000));
    let after = fs::metadata(r.join("etc")).unwrap();
    assert_eq!(
        (after.mode(), after.uid(), after.gid()),
        (before.mode(), before.uid(), before.gid())
    );
    assert_eq!(after.modified().unwrap(), old, "grandparent mtime untouched");
    assert_eq!((mode(&r.join("etc/app")), owner(&r.join("etc/app"))), (0o711, (0, 0)));

    // Merging into an existing directory does not re-own or re-mode it either.
    run(ctx.path(), r, &copy(&["."], "/etc/", &[".git", "sub"]), "/").unwrap();
    assert_eq!((mode(&r.join("etc")), owner(&r.join("etc"))), (0o751, (0, 0)));
    assert_eq!(fs::read_to_string(r.join("etc/run.sh")).unwrap(), "#!/bin/sh\n");
    assert!(!r.join("etc/.git").exists() && !r.join("etc/sub").exists());
}

#[test]
fn dot_as_item_and_as_items() {
    if !require_root() {
        return;
    }
    let ctx = context();
    let rootfs = tempfile::tempdir().unwrap();
    let r = rootfs.path();
    // Copy_item: the context root itself becomes /src, with the root's mode.
    run(ctx.path(), r, &copy(&["."], "/src", &[".git"]), "/").unwrap();
    assert_eq!((mode(&r.join("src")), owner(&r.join("src"))), (0o700, (1000, 1000)));
    assert!(r.join("src/sub/deep/f").is_file());
    // Copy_items with `.`: merged into the (new, 0755) destination.
    run(ctx.path(), r, &copy(&["."], "/merged/", &[]), "/").unwrap();
    assert_eq!(mode(&r.join("merged")), 0o755);
    assert_eq!(fs::read_to_string(r.join("merged/.git/HEAD")).unwrap(), "ref");
}

#[test]
fn symlinks_are_copied_as_symlinks_never_read() {
    if !require_root() {
        return;
    }
    let ctx = context();
    symlink("/nonexistent/secret", ctx.path().join("dangling")).unwrap();
    let rootfs = tempfile::tempdir().unwrap();
    let r = rootfs.path();
    let plan = plan_copy(ctx.path(), &copy(&["passwd", "dangling"], "/x/", &[]), "/").unwrap();
    let stats = execute_copy(&plan, ctx.path(), r, 1000, 1000).unwrap();
    assert_eq!(stats.symlinks, 2);
    assert_eq!(fs::read_link(r.join("x/passwd")).unwrap(), Path::new("/etc/passwd"));
    assert_eq!(
        fs::read_link(r.join("x/dangling")).unwrap(),
        Path::new("/nonexistent/secret")
    );
    assert_eq!(owner(&r.join("x/passwd")), (1000, 1000), "lchown'd, not the target");
    assert_eq!(owner(Path::new("/etc/passwd")), (0, 0));
}

#[test]
fn existing_file_is_replaced_not_written_through() {
    if !require_root() {
        return;
    }
    let ctx = context();
    let rootfs = tempfile::tempdir().unwrap();
    let r = rootfs.path();
    write(&r.join("x/a.txt"), "old", 0o644);
    fs::hard_link(r.join("x/a.txt"), r.join("x/other")).unwrap();
    run(ctx.path(), r, &copy(&["a.txt"], "/x/", &[]), "/").unwrap();
    assert_eq!(fs::read_to_string(r.join("x/a.txt")).unwrap(), "plain");
    assert_eq!(fs::read_to_string(r.join("x/other")).unwrap(), "old");
    // A directory in the way of a file is an error, not a silent merge.
    fs::create_dir(r.join("x/run.sh")).unwrap();
    let err = run(ctx.path(), r, &copy(&["run.sh"], "/x/", &[]), "/").unwrap_err();
    assert!(matches!(err, CopyError::IsADirectory { .. }), "{err}");
}

/// A host directory with a canary file that the copies below must never touch.
struct Canary {
    dir: tempfile::TempDir,
}

impl Canary {
    fn new() -> Canary {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("victim"), "host", 0o644);
        Canary { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn assert_untouched(&self) {
        let names: Vec<_> = fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["victim"], "nothing new in the host directory");
        assert_eq!(fs::read_to_string(self.path().join("victim")).unwrap(), "host");
        assert_eq!(owner(&self.path().join("victim")), (0, 0));
        assert_eq!(mode(&self.path().join("victim")), 0o644);
    }
}

#[test]
fn rootfs_symlinks_cannot_lead_outside() {
    if !require_root() {
        return;
    }
    let ctx = context();
    write(&ctx.path().join("victim"), "evil", 0o4755);
    let canary = Canary::new();
    let host = canary.path().to_str().unwrap().to_string();
    let rootfs = tempfile::tempdir().unwrap();
    let r = rootfs.path();
    symlink("/", r.join("to_root")).unwrap();
    symlink("../../../../../../..", r.join("up")).unwrap();
    symlink(&host, r.join("abs")).unwrap();
    fs::create_dir(r.join("d")).unwrap();
    symlink(format!("{host}/victim"), r.join("d/victim")).unwrap();

    // `/to_root` and `/up` resolve to the rootfs's own root.
    run(ctx.path(), r, &copy(&["victim"], "/to_root/", &[]), "/").unwrap();
    assert_eq!(fs::read_to_string(r.join("victim")).unwrap(), "evil");
    run(ctx.path(), r, &copy(&["a.txt"], "/up/up/a.txt", &[]), "/").unwrap();
    assert_eq!(fs::read_to_string(r.join("a.txt")).unwrap(), "plain");
    run(ctx.path(), r, &copy(&["a.txt"], "/../../../escaped", &[]), "/").unwrap();
    assert!(r.join("escaped").is_file());
    // `/abs` points at a host path: inside the rootfs it is dangling, so the copy fails.
    let err = run(ctx.path(), r, &copy(&["victim"], "/abs/", &[]), "/").unwrap_err();
    assert!(matches!(err, CopyError::NotADirectory { .. }), "{err}");
    let err = run(ctx.path(), r, &copy(&["victim"], "/abs/sub/victim", &[]), "/").unwrap_err();
    assert!(matches!(err, CopyError::NotADirectory { .. }), "{err}");
    // A symlink at the final position is replaced, never written through.
    run(ctx.path(), r, &copy(&["victim"], "/d/", &[]), "/").unwrap();
    assert!(fs::symlink_metadata(r.join("d/victim")).unwrap().is_file());
    // Once the host path exists inside the rootfs too, the symlink resolves there.
    fs::create_dir_all(r.join(host.trim_start_matches('/'))).unwrap();
    run(ctx.path(), r, &copy(&["victim"], "/abs/", &[]), "/").unwrap();
    assert_eq!(
        fs::read_to_string(r.join(host.trim_start_matches('/')).join("victim")).unwrap(),
        "evil"
    );
    canary.assert_untouched();
}

#[test]
fn source_changed_between_plan_and_execute() {
    let ctx = context();
    let rootfs = tempfile::tempdir().unwrap();
    let spec = copy(&["a.txt", "run.sh", "sub"], "/x/", &[]);
    let plan = plan_copy(ctx.path(), &spec, "/").unwrap();
    write(&ctx.path().join("a.txt"), "PLAIN", 0o644);
    let err = execute_copy(&plan, ctx.path(), rootfs.path(), 0, 0).unwrap_err();
    assert!(
        matches!(&err, CopyError::SourceChanged { path } if path == "a.txt"),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "source \"a.txt\" changed during the build (it no longer matches the manifest taken when planning the copy)"
    );

    // Deleted, or swapped for a symlink: also detected.
    let plan = plan_copy(ctx.path(), &spec, "/").unwrap();
    fs::remove_file(ctx.path().join("sub/deep/f")).unwrap();
    let err = execute_copy(&plan, ctx.path(), rootfs.path(), 0, 0).unwrap_err();
    assert!(matches!(err, CopyError::SourceChanged { .. }), "{err}");
    let plan = plan_copy(ctx.path(), &spec, "/").unwrap();
    fs::remove_file(ctx.path().join("run.sh")).unwrap();
    symlink("a.txt", ctx.path().join("run.sh")).unwrap();
    let err = execute_copy(&plan, ctx.path(), rootfs.path(), 0, 0).unwrap_err();
    assert!(matches!(err, CopyError::SourceChanged { .. }), "{err}");
}

#[test]
fn plan_errors_and_ids() {
    let ctx = context();
    let err = plan_copy(ctx.path(), &copy(&[], "/x/", &[]), "/").unwrap_err();
    assert_eq!(err.to_string(), "no source items for copy");
    let err = plan_copy(ctx.path(), &copy(&["a.txt", "run.sh"], "x", &[]), "/").unwrap_err();
    assert!(err
        .to_string()
        .starts_with("when copying multiple items, the destination must end with '/'"));
    let err = plan_copy(ctx.path(), &copy(&["../etc"], "x", &[]), "/").unwrap_err();
    assert_eq!(err.to_string(), r#"can't use .. in source paths (in "../etc")"#);

    let plan = plan_copy(ctx.path(), &copy(&["run.sh"], "bin/", &[]), "/usr").unwrap();
    let CopyOp::Items { dst_dir, .. } = &plan.op else {
        panic!()
    };
    assert_eq!(dst_dir, "/usr/bin/");
    // chmod -x changes the v1 id only.
    let parent = StepId::from_digest(&[7; 32]);
    let before = plan.op.clone();
    chmod(&ctx.path().join("run.sh"), 0o644);
    let after = plan_copy(ctx.path(), &copy(&["run.sh"], "bin/", &[]), "/usr")
        .unwrap()
        .op;
    assert_ne!(
        copy_id(IdScheme::V1, &parent, &User::ROOT, &before),
        copy_id(IdScheme::V1, &parent, &User::ROOT, &after)
    );
    assert_eq!(
        copy_id(IdScheme::Obuilder, &parent, &User::ROOT, &before),
        copy_id(IdScheme::Obuilder, &parent, &User::ROOT, &after)
    );
}

#[test]
fn multi_chunk_files_are_copied_exactly() {
    let ctx = tempfile::tempdir().unwrap();
    // 3.5 MiB plus a tail: several copy chunks, the last one partial.
    let data: Vec<u8> = (0..(7 << 19) + 12345u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(ctx.path().join("big"), &data).unwrap();
    fs::write(ctx.path().join("empty"), b"").unwrap();
    let rootfs = tempfile::tempdir().unwrap();
    let plan = plan_copy(ctx.path(), &copy(&["big", "empty"], "/", &[]), "/").unwrap();
    let stats = execute_copy(&plan, ctx.path(), rootfs.path(), 0, 0).unwrap();
    assert_eq!(stats.bytes, data.len() as u64);
    assert_eq!(fs::read(rootfs.path().join("big")).unwrap(), data);
    assert_eq!(fs::read(rootfs.path().join("empty")).unwrap(), b"");
}

#[test]
fn directory_symlinks_in_the_image_are_followed_inside_it() {
    if !require_root() {
        return;
    }
    let ctx = tempfile::tempdir().unwrap();
    write(&ctx.path().join("lib/x.so"), "so", 0o644);
    write(&ctx.path().join("bin/tool"), "tool", 0o755);
    let rootfs = tempfile::tempdir().unwrap();
    let r = rootfs.path();
    fs::create_dir_all(r.join("usr/lib")).unwrap();
    fs::create_dir_all(r.join("usr/bin")).unwrap();
    symlink("usr/lib", r.join("lib")).unwrap();
    symlink("/usr/bin", r.join("bin")).unwrap();
    run(ctx.path(), r, &copy(&["lib", "bin"], "/", &[]), "/").unwrap();
    assert_eq!(fs::read_to_string(r.join("usr/lib/x.so")).unwrap(), "so");
    assert_eq!(fs::read_to_string(r.join("usr/bin/tool")).unwrap(), "tool");
    assert!(fs::symlink_metadata(r.join("lib")).unwrap().is_symlink());
    assert!(fs::symlink_metadata(r.join("bin")).unwrap().is_symlink());
}
