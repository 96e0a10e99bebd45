//! `strata healthcheck`: checks and times each part a build needs.

use std::time::Duration;

use clap::Args;

use super::backend::{self, BackendArgs, StoreArgs};
use super::{CliResult, GlobalArgs};
use strata::builder::healthcheck::HealthOptions;

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The base image the runtime check runs in
    #[arg(long, default_value = "busybox", value_name = "IMAGE")]
    pub base: String,
    /// Limit for the runtime check, in seconds (fetching the base is not counted)
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub timeout: f64,
    /// Unhealthy below this percentage of free space
    #[arg(long = "min-free", default_value_t = 10.0, value_name = "PERCENT")]
    pub min_free: f64,
    /// One JSON object on stdout
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub backend: BackendArgs,
}

pub fn run(global: &GlobalArgs, args: HealthcheckArgs) -> CliResult {
    let checks = match backend::open_builder(global, &args.store, &args.backend) {
        Ok(builder) => builder.healthcheck(&HealthOptions {
            base: args.base.clone(),
            timeout: Duration::from_secs_f64(args.timeout.max(0.0)),
            min_free_percent: args.min_free,
        }),
        Err(e) => vec![strata::builder::healthcheck::Check {
            name: "open".to_owned(),
            healthy: false,
            seconds: 0.0,
            detail: format!("{:#}", e.error),
        }],
    };
    let healthy = checks.iter().all(|c| c.healthy);
    if args.json {
        println!("{}", serde_json::json!({"healthy": healthy, "checks": checks}));
    } else {
        for c in &checks {
            let status = if c.healthy {
                "healthy".to_owned()
            } else {
                format!("unhealthy: {}", c.detail)
            };
            let detail = if c.healthy && !c.detail.is_empty() {
                format!(" ({})", c.detail)
            } else {
                String::new()
            };
            println!("{:<12} {:>7.3}s  {status}{detail}", c.name, c.seconds);
        }
        println!(
            "{}",
            if healthy {
                "Healthcheck passed"
            } else {
                "Healthcheck failed"
            }
        );
    }
    Ok(if healthy { 0 } else { 1 })
}
