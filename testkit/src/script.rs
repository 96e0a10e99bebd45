//! A fixture made and torn down by a script in `scripts/fixtures/`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `scripts/fixtures/NAME create DIR [ARGS...]` now and `... destroy DIR` on drop.
/// `output` is what `create` printed on stdout, trimmed (a mount point, a pool name, a port).
pub struct ScriptFixture {
    script: PathBuf,
    dir: tempfile::TempDir,
    pub output: String,
}

impl ScriptFixture {
    pub fn create(name: &str, args: &[&str]) -> Result<ScriptFixture, String> {
        let script = crate::repo_root().join("scripts/fixtures").join(name);
        let dir = tempfile::Builder::new()
            .prefix(&format!("strata-{name}-"))
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let out = Command::new(&script)
            .arg("create")
            .arg(dir.path())
            .args(args)
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        let fixture = ScriptFixture {
            script,
            dir,
            output: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        };
        if !out.status.success() {
            // `fixture` drops here, running `destroy` on whatever was half made.
            return Err(format!(
                "fixture {name} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(fixture)
    }

    /// The fixture's private temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for ScriptFixture {
    fn drop(&mut self) {
        match Command::new(&self.script).arg("destroy").arg(self.dir.path()).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: destroying fixture {} failed: {}",
                self.script.display(),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("warning: destroying fixture {}: {e}", self.script.display()),
        }
    }
}
