//! The store spec parser never panics; whatever it accepts names an absolute directory
//! without `..`, and its `Display` form parses back to an equal spec (and displays the same).
#![no_main]

use std::path::Component;
use std::str::FromStr;

use libfuzzer_sys::fuzz_target;
use strata_stores::{RsyncMode, StoreSpec};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(spec) = StoreSpec::from_str(text) else {
        return;
    };
    let path = spec.path();
    assert!(
        path.is_absolute(),
        "{text:?} parsed to {spec:?} with relative path {path:?}"
    );
    assert!(
        !path.components().any(|c| matches!(c, Component::ParentDir)),
        "{text:?} parsed to {spec:?} whose path {path:?} has `..`"
    );
    let shown = spec.to_string();
    assert_eq!(shown.split_once(':').map(|(k, _)| k), Some(spec.kind()), "{shown:?}");
    let back = StoreSpec::from_str(&shown).unwrap_or_else(|e| panic!("{text:?} -> {spec:?} -> {shown:?}: {e}"));
    assert_eq!(back, spec, "{text:?} -> {shown:?}");
    assert_eq!(back.to_string(), shown, "{text:?}: Display is not stable");
    assert_eq!(back.path(), path);
    // The rsync mode is a separate flag, not part of the spec's text.
    let hardlink = spec.clone().with_rsync_mode(RsyncMode::Hardlink);
    assert_eq!(hardlink.to_string(), shown);
    assert_eq!(hardlink.path(), path);
});
