//! `healthcheck`: checks and times each part a build needs, leaving nothing behind.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use strata_sandbox::Cancel;
use strata_stores::{Prepared, StepId};

use super::progress::Silent;
use super::{BuildError, BuildOptions, Builder};
use crate::spec::{Op, OpItem, Run, Span, Spec};

#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub name: String,
    pub healthy: bool,
    pub seconds: f64,
    /// Why it is unhealthy, or a detail when healthy.
    pub detail: String,
}

#[derive(Debug, Clone)]
pub struct HealthOptions {
    pub base: String,
    /// Limit for running the step (fetching the base is not counted).
    pub timeout: Duration,
    pub min_free_percent: f64,
}

fn unique_id(label: &str) -> StepId {
    let mut h = Sha256::new();
    h.update(format!("strata-healthcheck {label} {} {:?}", std::process::id(), Instant::now()).as_bytes());
    StepId::from_digest(&h.finalize())
}

fn timed(name: &str, f: impl FnOnce() -> Result<String, String>) -> Check {
    let started = Instant::now();
    let result = f();
    let seconds = started.elapsed().as_secs_f64();
    match result {
        Ok(detail) => Check {
            name: name.to_owned(),
            healthy: true,
            seconds,
            detail,
        },
        Err(detail) => Check {
            name: name.to_owned(),
            healthy: false,
            seconds,
            detail,
        },
    }
}

impl Builder {
    pub fn healthcheck(&self, options: &HealthOptions) -> Vec<Check> {
        let mut checks = vec![
            timed("database", || self.check_database()),
            timed("store", || self.check_store().map_err(|e| e.to_string())),
            timed("cache", || self.check_cache().map_err(|e| e.to_string())),
        ];
        // The base is fetched outside the timed check.
        let base_spec = Spec {
            stages: Vec::new(),
            from: options.base.clone(),
            from_span: Span::default(),
            ops: Vec::new(),
        };
        let fetch = timed("base image", || {
            self.build(&base_spec, &BuildOptions::default(), &Silent, &Cancel::new())
                .map(|id| format!("{} is {id}", options.base))
                .map_err(|e| e.to_string())
        });
        let fetched = fetch.healthy;
        checks.push(fetch);
        if fetched {
            checks.push(timed("runtime", || self.check_runtime(&base_spec, options.timeout)));
        }
        checks.push(timed("free space", || {
            let usage = self.store().disk_usage().map_err(|e| e.to_string())?;
            let free = usage.free_percent();
            if free >= options.min_free_percent {
                Ok(format!("{free:.1}% free"))
            } else {
                Err(format!("{free:.1}% free, below {}%", options.min_free_percent))
            }
        }));
        checks
    }

    fn check_database(&self) -> Result<String, String> {
        let report = self.reconcile(false).map_err(|e| e.to_string())?;
        match report.problems.first() {
            None => Ok(format!("{} items", self.db().count().map_err(|e| e.to_string())?)),
            Some(p) => Err(format!("{} problems, first: {p}", report.problems.len())),
        }
    }

    /// Clone, write, commit and delete two throwaway items.
    fn check_store(&self) -> Result<String, BuildError> {
        let store = self.store();
        let (a, b) = (unique_id("a"), unique_id("b"));
        let write = |base: Option<&StepId>, id: &StepId| -> Result<(), BuildError> {
            match store.prepare(base, id)? {
                Prepared::Exists(_) => Ok(()),
                Prepared::Pending(pending) => {
                    let rootfs = pending.path().join("rootfs");
                    std::fs::create_dir_all(&rootfs)
                        .and_then(|_| std::fs::write(rootfs.join(id.as_str()), b"healthcheck"))
                        .map_err(|e| BuildError::io(format!("writing in {}", rootfs.display()), e))?;
                    pending.commit()?;
                    Ok(())
                }
            }
        };
        let result = write(None, &a).and_then(|_| write(Some(&a), &b)).and_then(|_| {
            let item = store
                .result(&b)?
                .ok_or_else(|| BuildError::Usage("committed item vanished".into()))?;
            let content = std::fs::read(item.join("rootfs").join(a.as_str()))
                .map_err(|e| BuildError::io("reading the clone", e))?;
            if content != b"healthcheck" {
                return Err(BuildError::Usage("the clone lost its parent's data".into()));
            }
            Ok(())
        });
        for id in [&b, &a] {
            if store.result(id)?.is_some() {
                store.delete(id)?;
            }
        }
        result.map(|_| "clone, write, commit, delete".to_owned())
    }

    fn check_cache(&self) -> Result<String, BuildError> {
        let store = self.store();
        let name = format!("strata-healthcheck-{}", std::process::id());
        let lease = store.cache(&name, 0, 0)?;
        let file = lease.path().join("probe");
        std::fs::write(&file, b"x").map_err(|e| BuildError::io(format!("writing {}", file.display()), e))?;
        lease.release()?;
        let lease = store.cache(&name, 0, 0)?;
        let ok = lease.path().join("probe").exists();
        lease.release()?;
        store.delete_cache(&name)?;
        if ok {
            Ok("write, release, reread".to_owned())
        } else {
            Err(BuildError::Usage("a released cache lost its data".into()))
        }
    }

    fn check_runtime(&self, base_spec: &Spec, timeout: Duration) -> Result<String, String> {
        // A unique command, so the step really runs every time.
        let mut spec = base_spec.clone();
        spec.ops = vec![
            OpItem {
                op: Op::Shell(vec!["/bin/sh".into(), "-c".into()]),
                span: Span::default(),
            },
            OpItem {
                op: Op::Run(Run {
                    shell: format!("echo healthcheck; : {}", unique_id("run")),
                    ..Run::default()
                }),
                span: Span::default(),
            },
        ];
        let cancel = Cancel::new();
        let timer_cancel = cancel.clone();
        let timer = std::thread::spawn(move || {
            if !timer_cancel.wait_timeout(timeout) {
                timer_cancel.cancel();
                return true;
            }
            false
        });
        let result = self.build(&spec, &BuildOptions::default(), &Silent, &cancel);
        cancel.cancel();
        let fired = timer.join().unwrap_or(false);
        match result {
            Ok(id) => {
                let _ = self.delete_tree(id.as_str(), &mut |_| {});
                Ok("ran `echo healthcheck`".to_owned())
            }
            Err(_) if fired => Err(format!("timed out after {}s", timeout.as_secs_f64())),
            Err(e) => Err(e.to_string()),
        }
    }
}
