//! Rendering the builder's events on stderr: coloured headings and notes on a terminal,
//! plain lines when piped, one JSON object per event with `--progress json`.
//!
//! Output of concurrently built stages is line-buffered per stage and each line prefixed
//! with the stage's name, so lines never interleave mid-way.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use clap::ValueEnum;

use strata::builder::{Event, Reporter, StepResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// Colour on a terminal, plain otherwise
    Auto,
    /// Plain lines
    Plain,
    /// One JSON object per line
    Json,
}

pub struct StderrReporter {
    json: bool,
    color: bool,
    quiet: bool,
    partial: Mutex<HashMap<Vec<String>, Vec<u8>>>,
}

impl StderrReporter {
    pub fn new(mode: ProgressMode, color: super::Color, quiet: bool) -> StderrReporter {
        let tty = std::io::stderr().is_terminal();
        StderrReporter {
            json: mode == ProgressMode::Json,
            color: match color {
                super::Color::Always => true,
                super::Color::Never => false,
                super::Color::Auto => mode == ProgressMode::Auto && tty,
            },
            quiet,
            partial: Mutex::new(HashMap::new()),
        }
    }

    fn prefix(stage: &[String]) -> String {
        if stage.is_empty() {
            String::new()
        } else {
            format!("[{}] ", stage.join("/"))
        }
    }

    fn line(&self, stage: &[String], text: &str, color: &str) {
        self.flush_partial(stage);
        let mut err = std::io::stderr().lock();
        let prefix = Self::prefix(stage);
        let _ = if self.color {
            writeln!(err, "{prefix}\x1b[{color}m{text}\x1b[0m")
        } else {
            writeln!(err, "{prefix}{text}")
        };
    }

    fn output(&self, stage: &[String], bytes: &[u8]) {
        let mut partial = self.partial.lock().unwrap_or_else(|p| p.into_inner());
        let buf = partial.entry(stage.to_vec()).or_default();
        buf.extend_from_slice(bytes);
        let prefix = Self::prefix(stage);
        let mut err = std::io::stderr().lock();
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let _ = err.write_all(prefix.as_bytes());
            let _ = err.write_all(&line);
        }
    }

    fn flush_partial(&self, stage: &[String]) {
        let mut partial = self.partial.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(buf) = partial.remove(stage) {
            if !buf.is_empty() {
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(Self::prefix(stage).as_bytes());
                let _ = err.write_all(&buf);
                let _ = err.write_all(b"\n");
            }
        }
    }

    fn json_event(&self, event: &Event<'_>) {
        let value = match event {
            Event::Heading { stage, text } => serde_json::json!({"event": "heading", "stage": stage, "text": text}),
            Event::Note { stage, text } => serde_json::json!({"event": "note", "stage": stage, "text": text}),
            Event::Output { stage, bytes } => {
                serde_json::json!({"event": "output", "stage": stage, "text": String::from_utf8_lossy(bytes)})
            }
            Event::StepDone {
                stage,
                id,
                result,
                duration,
            } => serde_json::json!({
                "event": "step",
                "stage": stage,
                "id": id,
                "cached": *result == StepResult::Cached,
                "seconds": duration.as_secs_f64(),
            }),
        };
        let _ = writeln!(std::io::stderr().lock(), "{value}");
    }
}

impl Reporter for StderrReporter {
    fn event(&self, event: Event<'_>) {
        if self.json {
            return self.json_event(&event);
        }
        if self.quiet {
            return;
        }
        match event {
            Event::Heading { stage, text } => self.line(stage, text, "1;34"),
            Event::Note { stage, text } => self.line(stage, text, "33"),
            Event::Output { stage, bytes } => self.output(stage, bytes),
            Event::StepDone { stage, .. } => self.flush_partial(stage),
        }
    }
}
