//! The spec parser never panics; an accepted spec survives the canonical printer, the
//! readable printer and `fmt` (which is idempotent), and converts to a Dockerfile.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use strata::spec::dockerfile::{to_dockerfile, DockerfileOptions, Escape};
use strata::spec::format::format_source;
use strata::spec::parse_spec;
use strata::spec::print::{pretty, to_sexp};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("fuzz.spec");
    let Ok(spec) = parse_spec(file, text) else {
        return;
    };
    let canonical = to_sexp(&spec);
    let machine = canonical.to_machine();
    let reparsed = parse_spec(file, &machine).expect("the machine form parses");
    assert_eq!(to_sexp(&reparsed), canonical);
    let readable = pretty(&spec);
    let reparsed = parse_spec(file, &readable).expect("the readable form parses");
    assert_eq!(to_sexp(&reparsed), canonical);
    let formatted = format_source(file, text).expect("fmt accepts what parses");
    let reparsed = parse_spec(file, &formatted).expect("fmt's output parses");
    assert_eq!(to_sexp(&reparsed), canonical);
    assert_eq!(format_source(file, &formatted).expect("fmt of fmt"), formatted, "fmt is not idempotent");
    for buildkit in [false, true] {
        for escape in [Escape::Unix, Escape::Windows] {
            let _ = to_dockerfile(&spec, &DockerfileOptions { buildkit, escape });
        }
    }
});
