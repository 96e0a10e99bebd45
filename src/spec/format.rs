//! `strata fmt`: the readable layout of [`super::print`], keeping the source's comments.
//!
//! The canonical items are printed in order; each source item's comments go with it:
//! leading comments on their own lines before it, one trailing comment after it on its line.
//! Where the layout has no room for a comment, it moves to the nearest place that has one and
//! stays there on the next run (so `fmt` of `fmt`'s output is identical):
//! - comments inside one-line items (and inside a `run`/`copy` field) go before the item
//!   (before the field);
//! - comments before a spec's first item go before the spec's `(`;
//! - comments before a list's `)` (other than the file's) go before the next item;
//! - a trailing comment of the last element of a list that closes on the same line goes after
//!   the enclosing item; of several trailing comments only the last stays trailing, the
//!   others go before the item;
//! - comments of fields the canonical form omits (`(from context)`, empty `(exclude)`,
//!   `(network)`, `(cache)`, `(secrets)`) go before the operation.

use std::path::Path;

use super::error::SpecError;
use super::parse::parse_node;
use super::print::{spec_items, Body, Item, Layout};
use super::reader::{read_document, Comment, Node};
use super::sexp::Sexp;

/// Parses, validates and lays out a spec file's text, keeping its comments.
pub fn format_source(file: &Path, text: &str) -> Result<String, SpecError> {
    let document = read_document(file, text)?;
    let spec = parse_node(file, &document.root)?;
    let root = &document.root;
    let mut before = texts(&root.leading);
    let (mut items, carry) = spec_list(root.list().unwrap_or(&[]), spec_items(&spec));
    if let Some(first) = items.first_mut() {
        before.append(&mut first.leading);
    }
    let mut closing = carry;
    closing.extend(texts(&root.closing));
    let mut trailing = texts(&root.trailing);
    let last = trailing.pop();
    closing.extend(trailing);
    let layout = Layout {
        before,
        items,
        closing,
        trailing: last,
        after: texts(&document.after),
    };
    Ok(layout.render())
}

fn texts(comments: &[Comment]) -> Vec<String> {
    comments.iter().map(|c| c.text.clone()).collect()
}

fn all_comments(node: &Node) -> Vec<String> {
    let mut out = Vec::new();
    node.all_comments(&mut out);
    texts(&out)
}

fn inner_comments(node: &Node) -> Vec<String> {
    let mut out = Vec::new();
    node.inner_comments(&mut out);
    texts(&out)
}

/// Pairs the items of a source spec list with their canonical forms. Returns the items and
/// the comments that must go before whatever follows the list.
fn spec_list(nodes: &[Node], canonical: Vec<Sexp>) -> (Vec<Item>, Vec<String>) {
    let mut items = Vec::with_capacity(canonical.len());
    let mut carry: Vec<String> = Vec::new();
    for (node, sexp) in nodes.iter().zip(canonical) {
        let (mut item, out) = item(node, sexp);
        if !carry.is_empty() {
            carry.append(&mut item.leading);
            item.leading = std::mem::take(&mut carry);
        }
        carry = out;
        items.push(item);
    }
    (items, carry)
}

/// Keeps the last trailing comment; the others go before the item.
fn settle(item: &mut Item, mut trailing: Vec<String>) {
    item.trailing = trailing.pop();
    item.leading.extend(trailing);
}

fn head(node: &Node) -> Option<&str> {
    node.list()?.first()?.atom()
}

/// One item with its comments, and the comments to carry to the next item.
fn item(node: &Node, sexp: Sexp) -> (Item, Vec<String>) {
    let mut leading = texts(&node.leading);
    let source = node.list().unwrap_or(&[]);
    // A build's nested spec is paired item by item, so take its canonical items first.
    let nested_sexps = match &sexp {
        Sexp::List(parts) if parts.len() == 3 && parts[0] == Sexp::Atom("build".into()) => match &parts[2] {
            Sexp::List(nested) => nested.clone(),
            Sexp::Atom(_) => Vec::new(),
        },
        _ => Vec::new(),
    };
    match Body::of(sexp) {
        Body::Line(sexp) => {
            leading.extend(inner_comments(node));
            let mut item = Item {
                leading,
                trailing: None,
                body: Body::Line(sexp),
            };
            settle(&mut item, texts(&node.trailing));
            (item, Vec::new())
        }
        Body::Fields {
            op,
            fields,
            always_vertical,
        } => {
            let (op_name, source_fields) = source.split_first().map_or((None, &[][..]), |(h, r)| (Some(h), r));
            if let Some(op_name) = op_name {
                leading.extend(all_comments(op_name));
            }
            let canonical_names: Vec<Option<String>> = fields.iter().map(field_name).collect();
            // Comments of source fields that the canonical form drops.
            for source_field in source_fields {
                let name = head(source_field).map(str::to_string);
                if !canonical_names.contains(&name) {
                    leading.extend(all_comments(source_field));
                }
            }
            let mut fields: Vec<Item> = fields
                .into_iter()
                .map(|mut field| {
                    let name = field_name(&field);
                    if let Some(source_field) = source_fields.iter().find(|f| head(f).map(str::to_string) == name) {
                        field.leading = texts(&source_field.leading);
                        field.leading.extend(inner_comments(source_field));
                        settle(&mut field, texts(&source_field.trailing));
                    }
                    field
                })
                .collect();
            if let Some(first) = fields.first_mut() {
                leading.append(&mut first.leading);
            }
            let mut trailing = Vec::new();
            if let Some(last) = fields.last_mut() {
                trailing.extend(last.trailing.take());
            }
            trailing.extend(texts(&node.trailing));
            let mut item = Item {
                leading,
                trailing: None,
                body: Body::Fields {
                    op,
                    fields,
                    always_vertical,
                },
            };
            settle(&mut item, trailing);
            (item, texts(&node.closing))
        }
        Body::Build {
            name,
            spec_leading: _,
            items: _,
        } => {
            let (keyword, name_node, spec_node) = match source {
                [keyword, name_node, spec_node] => (keyword, name_node, spec_node),
                // The parser accepted this node as a build, so it has three elements.
                _ => {
                    return (
                        Item {
                            leading,
                            trailing: None,
                            body: Body::Line(Sexp::List(Vec::new())),
                        },
                        Vec::new(),
                    )
                }
            };
            leading.extend(all_comments(keyword));
            leading.extend(all_comments(name_node));
            let mut spec_leading = texts(&spec_node.leading);
            let (mut nested, mut carry) = spec_list(spec_node.list().unwrap_or(&[]), nested_sexps);
            if let Some(first) = nested.first_mut() {
                spec_leading.append(&mut first.leading);
            }
            let mut trailing = Vec::new();
            if let Some(last) = nested.last_mut() {
                trailing.extend(last.trailing.take());
            }
            trailing.extend(texts(&spec_node.trailing));
            trailing.extend(texts(&node.trailing));
            carry.extend(texts(&spec_node.closing));
            carry.extend(texts(&node.closing));
            let mut item = Item {
                leading,
                trailing: None,
                body: Body::Build {
                    name,
                    spec_leading,
                    items: nested,
                },
            };
            settle(&mut item, trailing);
            (item, carry)
        }
    }
}

fn field_name(field: &Item) -> Option<String> {
    match &field.body {
        Body::Line(Sexp::List(items)) => match items.first() {
            Some(Sexp::Atom(name)) => Some(name.clone()),
            _ => None,
        },
        _ => None,
    }
}
