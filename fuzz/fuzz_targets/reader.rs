//! The reader never panics, and what it reads prints (machine form) and reads back the same.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use strata::spec::reader::read_sexp;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("fuzz.spec");
    if let Ok(sexp) = read_sexp(file, text) {
        let printed = sexp.to_machine();
        let again = read_sexp(file, &printed).expect("the machine form reads back");
        assert_eq!(sexp, again, "machine form {printed:?} reads back differently");
    }
});
