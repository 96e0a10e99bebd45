//! `strata check FILE...`: validate specs; print `FILE: ok` for each good one.

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::Args;

use super::exit::{CliError, CliResult, SUCCESS, USAGE};
use strata::spec::parse::{decode_utf8, parse_spec, read_spec_file};
use strata::spec::{Span, SpecError};

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Spec files to validate (`-` reads standard input)
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

pub fn run(args: &CheckArgs) -> CliResult {
    let mut failed = false;
    for file in &args.files {
        match read_spec_text(file).and_then(|(name, text)| parse_spec(&name, &text).map(|spec| (name, spec, text))) {
            Ok((name, spec, text)) => {
                // OBuilder accepts these; every strata build refuses them.
                let every_build = strata::builder::guard::Policy::default();
                for finding in strata::builder::guard::build_findings(&spec, &every_build) {
                    eprintln!("{}", finding.warning(&name));
                }
                for problem in strata::spec::lint::exclude_problems(&name, &text) {
                    let (line, col) = (problem.span.line, problem.span.col);
                    eprintln!("{}:{line}:{col}: warning: {}", name.display(), problem.message);
                }
                println!("{}: ok", name.display())
            }
            Err(e) => {
                eprintln!("{e}");
                failed = true;
            }
        }
    }
    if failed {
        Err(CliError::silent(USAGE))
    } else {
        Ok(SUCCESS)
    }
}

/// The name to show in messages and the text of a spec file, or of standard input for `-`.
pub fn read_spec_text(file: &Path) -> Result<(PathBuf, String), SpecError> {
    if file != Path::new("-") {
        return Ok((file.to_path_buf(), read_spec_file(file)?));
    }
    let name = PathBuf::from("<stdin>");
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
        return Err(SpecError {
            file: name,
            span: Span {
                start: 0,
                end: 0,
                line: 1,
                col: 1,
            },
            message: format!("cannot read standard input: {e}"),
        });
    }
    let text = decode_utf8(&name, bytes)?;
    Ok((name, text))
}
