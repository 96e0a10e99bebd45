//! `healthcheck`: checks and times each part a build needs, leaving nothing behind.

use std::time::{Duration, Instant};

use strata_sandbox::Cancel;

use super::progress::Silent;
use super::{BuildOptions, Builder};
use crate::catalog::selftest_id;
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
            timed("database", || self.catalog().check_database()),
            timed("store", || self.catalog().check_store().map_err(|e| e.to_string())),
            timed("cache", || self.catalog().check_cache().map_err(|e| e.to_string())),
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
            self.catalog().check_free_space(options.min_free_percent)
        }));
        checks
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
                    shell: format!("echo healthcheck; : {}", selftest_id("run")),
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
                let _ = self.catalog().delete_tree(&id, &mut |_| {});
                Ok("ran `echo healthcheck`".to_owned())
            }
            Err(_) if fired => Err(format!("timed out after {}s", timeout.as_secs_f64())),
            Err(e) => Err(e.to_string()),
        }
    }
}
