//! What a spec may say that a build cannot honour, found on the read document (so each
//! problem points at its exact atom): `build` refuses these (through
//! [`super::parse::load_spec`]), `check` only warns, since OBuilder accepts such specs.
//!
//! `exclude` entries: strata matches them as OBuilder does, against *basenames* at any depth
//! below a copied directory, without paths or globs, so that `--id-scheme obuilder` ids stay
//! OBuilder's. An entry with a `/` (`sub/secret.txt`) or a glob character (`*.txt`) would
//! never match anything, and the file it was meant to keep out would be copied: refused.

use std::path::Path;

use super::error::SpecError;
use super::reader::{read_document, Node, NodeKind};

/// Characters that make an exclude entry a path or a glob.
const NOT_A_BASENAME: &[char] = &['/', '*', '?', '['];

/// Why an exclude entry can never match as its author expects, if it cannot.
pub fn exclude_problem(entry: &str) -> Option<String> {
    if entry.contains('/') {
        let base = entry.trim_end_matches('/').rsplit('/').next().unwrap_or("");
        let hint = if base.is_empty() || base.contains(&NOT_A_BASENAME[1..]) {
            String::new()
        } else {
            format!(" (write {base:?} to exclude every entry of that name)")
        };
        return Some(format!(
            "exclude entry {entry:?} has a `/`: exclude matches basenames at any depth (as OBuilder), not paths, so it would exclude nothing{hint}"
        ));
    }
    if entry.contains(&NOT_A_BASENAME[1..]) {
        return Some(format!(
            "exclude entry {entry:?} has a glob character: exclude matches basenames exactly (as OBuilder), without globs, so it would exclude nothing"
        ));
    }
    None
}

/// Every exclude entry of `text` (a spec that parses) that [`exclude_problem`] objects to,
/// in order, at its position.
pub fn exclude_problems(file: &Path, text: &str) -> Vec<SpecError> {
    let mut found = Vec::new();
    if let Ok(document) = read_document(file, text) {
        walk(file, &document.root, &mut found);
    }
    found
}

fn head(node: &Node) -> Option<(&str, &[Node])> {
    match &node.kind {
        NodeKind::List(items) => {
            let (first, rest) = items.split_first()?;
            Some((first.atom()?, rest))
        }
        NodeKind::Atom { .. } => None,
    }
}

fn walk(file: &Path, node: &Node, found: &mut Vec<SpecError>) {
    let NodeKind::List(items) = &node.kind else { return };
    if let Some(("copy", fields)) = head(node) {
        for field in fields {
            if let Some(("exclude", entries)) = head(field) {
                for entry in entries {
                    if let Some(message) = entry.atom().and_then(exclude_problem) {
                        found.push(SpecError {
                            file: file.to_path_buf(),
                            span: entry.span,
                            message,
                        });
                    }
                }
            }
        }
        return;
    }
    for item in items {
        walk(file, item, found);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basenames_pass_paths_and_globs_do_not() {
        for ok in [".git", "_build", "secret.txt", "a.b-c", "..."] {
            assert_eq!(exclude_problem(ok), None, "{ok}");
        }
        for bad in ["sub/secret.txt", "_build/", "/abs", "*.txt", "a?", "[ab]", "**"] {
            assert!(exclude_problem(bad).is_some(), "{bad}");
        }
        assert!(exclude_problem("sub/secret.txt").unwrap().contains("\"secret.txt\""));
    }

    #[test]
    fn problems_point_at_the_entry_in_stages_too() {
        let text = "((build dev ((from a) (copy (src .) (dst /x/) (exclude ok sub/s))))\n (from b)\n (copy (src .) (dst /y/) (exclude *.txt)))";
        let found = exclude_problems(Path::new("f.spec"), text);
        let at: Vec<(u32, u32)> = found.iter().map(|e| (e.span.line, e.span.col)).collect();
        assert_eq!(at, vec![(1, 59), (3, 35)], "{found:?}");
        // A cache named `copy` is not a copy.
        let text = "((from a) (run (cache (copy (target /c))) (shell x)))";
        assert!(exclude_problems(Path::new("f"), text).is_empty());
    }
}
