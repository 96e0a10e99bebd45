//! What strata reads of the items of a store OBuilder made (adopted by [`super::Catalog::open`]).
//!
//! OBuilder keeps a base image's environment in `result/<id>/env`, as `((env ((K V) ...)))`
//! in sexplib's human format, where strata writes `image.json`. An adopted base item has
//! only the former; it cannot be given the latter (btrfs and ZFS results are read-only), so
//! the builder reads it through [`image_config`].

use std::path::Path;

use crate::fetch::ImageConfig;
use crate::spec::reader::read_document;
use crate::spec::Sexp;

/// OBuilder's name for the file.
pub const ENV: &str = "env";

/// The image config of a base item OBuilder fetched, from its `env` file: `Ok(None)` when the
/// item has none; an error naming the file when it is not OBuilder's format.
pub fn image_config(item: &Path) -> Result<Option<ImageConfig>, String> {
    let path = item.join(ENV);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let doc = read_document(&path, &text).map_err(|e| e.to_string())?;
    let bad = || {
        format!(
            "{}: not OBuilder's environment file (expected ((env ((NAME VALUE) ...))))",
            path.display()
        )
    };
    // `((env (PAIRS)))`: a record with one field.
    let Sexp::List(fields) = doc.root.to_sexp() else {
        return Err(bad());
    };
    let mut env = Vec::new();
    for field in fields {
        let Sexp::List(field) = field else { return Err(bad()) };
        match field.as_slice() {
            [Sexp::Atom(name), Sexp::List(pairs)] if name == "env" => {
                for pair in pairs {
                    match pair {
                        Sexp::List(kv) => match kv.as_slice() {
                            [Sexp::Atom(k), Sexp::Atom(v)] => env.push((k.clone(), v.clone())),
                            _ => return Err(bad()),
                        },
                        Sexp::Atom(_) => return Err(bad()),
                    }
                }
            }
            _ => return Err(bad()),
        }
    }
    Ok(Some(ImageConfig {
        env,
        ..ImageConfig::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_obuilder_env_files() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(image_config(dir.path()).unwrap(), None);
        std::fs::write(
            dir.path().join(ENV),
            "((env ((PATH /usr/local/sbin:/usr/bin) (GREETING \"hello world\") (EMPTY \"\"))))\n",
        )
        .unwrap();
        let config = image_config(dir.path()).unwrap().unwrap();
        assert_eq!(
            config.env,
            [
                ("PATH".to_owned(), "/usr/local/sbin:/usr/bin".to_owned()),
                ("GREETING".to_owned(), "hello world".to_owned()),
                ("EMPTY".to_owned(), String::new())
            ]
        );
        std::fs::write(dir.path().join(ENV), "((env ()))").unwrap();
        assert!(image_config(dir.path()).unwrap().unwrap().env.is_empty());
        std::fs::write(dir.path().join(ENV), "((env (PATH /bin)))").unwrap();
        let err = image_config(dir.path()).unwrap_err();
        assert!(err.contains("not OBuilder's environment file"), "{err}");
    }
}
