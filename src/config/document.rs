//! Where each key is in the file. A first pass over the TOML records every table key with the
//! byte spans of the key and its value, so that
//!
//! - unknown keys are reported by name, with a suggestion, before serde's `deny_unknown_fields`
//!   would (serde's message only lists every expected field), and
//! - errors found later, by serde or by validation, can name the line and key they are about.
//!
//! Only tables are walked; arrays and scalars are leaves. Types are serde's job, not this one's.
//!
//! toml 0.8 gives positions through `toml::Spanned`, but not for every key and value (a table
//! made implicitly by a `[build.attributes]` header has none), and `Spanned` fails outright
//! where there is no span. So the walk asks for a span the way `Spanned` does (the marker names
//! are read from `Spanned` itself, see [`raw::struct_shape`]) and accepts an answer without one.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserializer, IgnoredAny, Visitor};
use serde::Deserialize;
use toml::value::Datetime;
use toml::Spanned;

use super::error::Suggestion;
use super::raw;

/// A TOML document reduced to its tables: each key and value, with its span when toml has one.
enum Node {
    Table(Vec<(Key, Located)>),
    Leaf,
}

/// A value and, when toml knows it, where it is.
struct Located {
    span: Option<Range<usize>>,
    node: Node,
}

struct Key {
    name: String,
    span: Option<Range<usize>>,
}

/// Spans of one key: the key itself and its value (for a `[section]`, the key in the header).
#[derive(Clone, Debug)]
pub struct KeySpans {
    pub key: Option<Range<usize>>,
    pub value: Option<Range<usize>>,
}

/// Every key of the document by dotted path (`build.jobs`, `build.attributes.nixos`).
#[derive(Debug, Default)]
pub struct KeyIndex {
    keys: BTreeMap<String, KeySpans>,
}

/// An unknown key found by [`KeyIndex::parse`].
pub struct UnknownKey {
    pub section: String,
    pub key: String,
    pub span: Option<Range<usize>>,
    pub suggestion: Option<Suggestion>,
}

impl UnknownKey {
    fn offset(&self) -> usize {
        self.span.as_ref().map_or(usize::MAX, |s| s.start)
    }
}

impl KeyIndex {
    /// Reads the document's keys. Fails only on TOML syntax errors.
    pub fn parse(text: &str) -> Result<(KeyIndex, Option<UnknownKey>), toml::de::Error> {
        let root: Located = toml::from_str(text)?;
        let mut index = KeyIndex::default();
        let mut unknown = None;
        index.walk(&root.node, "", &raw::schema(), &mut unknown);
        Ok((index, unknown))
    }

    pub fn get(&self, path: &str) -> Option<&KeySpans> {
        self.keys.get(path)
    }

    /// The innermost key whose value contains `offset` (an error's span from serde), or whose
    /// key starts there.
    pub fn key_at(&self, offset: usize) -> Option<&str> {
        self.keys
            .iter()
            .filter_map(|(path, s)| {
                let value = s.value.as_ref();
                let hit = value.is_some_and(|v| v.contains(&offset))
                    || s.key.as_ref().is_some_and(|k| k.start == offset);
                hit.then(|| (value.map_or(0, |v| v.len()), path.as_str()))
            })
            .min()
            .map(|(_, path)| path)
    }

    fn walk(
        &mut self,
        node: &Node,
        path: &str,
        schema: &[(&'static str, &'static [&'static str])],
        unknown: &mut Option<UnknownKey>,
    ) {
        let Node::Table(entries) = node else { return };
        let known = schema.iter().find(|(p, _)| *p == path).map(|(_, f)| *f);
        for (key, value) in entries {
            let child = join(path, &key.name);
            self.keys.insert(
                child.clone(),
                KeySpans {
                    key: key.span.clone(),
                    value: value.span.clone(),
                },
            );
            match known {
                Some(fields) if !fields.contains(&key.name.as_str()) => {
                    // Report the first unknown key in file order (toml keeps tables sorted by
                    // name, not position); keep indexing so later errors still have positions.
                    let offset = key.span.as_ref().map_or(usize::MAX, |s| s.start);
                    if unknown.as_ref().map_or(true, |u| offset < u.offset()) {
                        *unknown = Some(UnknownKey {
                            section: path.to_owned(),
                            key: key.name.clone(),
                            span: key.span.clone(),
                            suggestion: suggest(&key.name, path, fields, schema),
                        });
                    }
                }
                // A known key, or one in a table that is not ours to check (nix options):
                // walk on for positions.
                _ => self.walk(&value.node, &child, schema, unknown),
            }
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A close spelling in the same table, else the same key in another table.
fn suggest(
    key: &str,
    section: &str,
    fields: &[&str],
    schema: &[(&'static str, &'static [&'static str])],
) -> Option<Suggestion> {
    let normalized = key.to_ascii_lowercase().replace('-', "_");
    let close = fields
        .iter()
        .map(|f| (strsim::damerau_levenshtein(&normalized, f), *f))
        .filter(|(d, f)| *d <= (f.len() / 3).max(1))
        .min();
    if let Some((_, f)) = close {
        return Some(Suggestion::Similar(f.to_owned()));
    }
    schema
        .iter()
        .find(|(p, f)| *p != section && !p.is_empty() && f.contains(&normalized.as_str()))
        .map(|(p, _)| Suggestion::InSection(p.to_string()))
}

/// `toml::Spanned`'s marker struct name and its three fields (start, end, value).
fn spanned_shape() -> (&'static str, &'static [&'static str]) {
    raw::struct_shape::<Spanned<String>>()
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (name, fields) = spanned_shape();
        d.deserialize_struct(name, fields, KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a table key")
    }

    fn visit_str<E>(self, name: &str) -> Result<Key, E> {
        Ok(Key {
            name: name.to_owned(),
            span: None,
        })
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Key, A::Error> {
        map.next_key::<IgnoredAny>()?; // the start marker
        let (span, name) = rest_of_span::<A, String>(map)?;
        Ok(Key {
            name,
            span: Some(span),
        })
    }
}

/// The rest of a span as toml sends it, once its first key (the start marker) is read: the
/// start, then the end and the value.
fn rest_of_span<'de, A: de::MapAccess<'de>, T: Deserialize<'de>>(
    mut map: A,
) -> Result<(Range<usize>, T), A::Error> {
    let end_field = spanned_shape().1.get(1).copied();
    let start = map.next_value::<usize>()?;
    let (mut end, mut value) = (None, None);
    while let Some(field) = map.next_key::<String>()? {
        if Some(field.as_str()) == end_field {
            end = Some(map.next_value::<usize>()?);
        } else {
            value = Some(map.next_value::<T>()?);
        }
    }
    match (end, value) {
        (Some(end), Some(value)) => Ok((start..end, value)),
        _ => Err(de::Error::custom("incomplete span from the TOML parser")),
    }
}

impl<'de> Deserialize<'de> for Located {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (name, fields) = spanned_shape();
        d.deserialize_struct(name, fields, NodeVisitor { span_first: true })
    }
}

/// A value read without asking for its span (the inside of a span toml already gave).
struct Bare(Node);

impl<'de> Deserialize<'de> for Bare {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor { span_first: false })
            .map(|l| Bare(l.node))
    }
}

struct NodeVisitor {
    /// Whether a span may arrive (as a map of start, end, value) instead of the value itself.
    span_first: bool,
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Located;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Located, A::Error> {
        let start_field = spanned_shape().1.first().copied();
        let datetime_field = raw::struct_shape::<Datetime>().1.first().copied();
        let Some(first) = map.next_key::<Key>()? else {
            return Ok(Located::table(Vec::new()));
        };
        if self.span_first && Some(first.name.as_str()) == start_field {
            let (span, Bare(node)) = rest_of_span(map)?;
            return Ok(Located {
                span: Some(span),
                node,
            });
        }
        if Some(first.name.as_str()) == datetime_field {
            map.next_value::<IgnoredAny>()?;
            return Ok(Located::leaf());
        }
        let mut entries = vec![(first, map.next_value::<Located>()?)];
        while let Some(key) = map.next_key::<Key>()? {
            entries.push((key, map.next_value::<Located>()?));
        }
        Ok(Located::table(entries))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Located, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Located::leaf())
    }

    fn visit_bool<E>(self, _: bool) -> Result<Located, E> {
        Ok(Located::leaf())
    }
    fn visit_i64<E>(self, _: i64) -> Result<Located, E> {
        Ok(Located::leaf())
    }
    fn visit_u64<E>(self, _: u64) -> Result<Located, E> {
        Ok(Located::leaf())
    }
    fn visit_f64<E>(self, _: f64) -> Result<Located, E> {
        Ok(Located::leaf())
    }
    fn visit_str<E>(self, _: &str) -> Result<Located, E> {
        Ok(Located::leaf())
    }
}

impl Located {
    fn leaf() -> Self {
        Located {
            span: None,
            node: Node::Leaf,
        }
    }

    fn table(entries: Vec<(Key, Located)>) -> Self {
        Located {
            span: None,
            node: Node::Table(entries),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unknown(text: &str) -> Option<UnknownKey> {
        KeyIndex::parse(text).unwrap().1
    }

    #[test]
    fn keys_are_indexed_by_dotted_path_with_their_spans() {
        let text = "[repo]\nurl = \"x\"\n[build.attributes]\nnixos = \"{name}\"\n";
        let (index, unknown) = KeyIndex::parse(text).unwrap();
        assert!(unknown.is_none());
        let url = index.get("repo.url").unwrap();
        assert_eq!(&text[url.key.clone().unwrap()], "url");
        assert_eq!(&text[url.value.clone().unwrap()], "\"x\"");
        assert!(index.get("build.attributes.nixos").is_some());
        let at = text.find("{name}").unwrap();
        assert_eq!(index.key_at(at), Some("build.attributes.nixos"));
    }

    #[test]
    fn misspelt_key_is_reported_with_the_close_spelling() {
        let u = unknown("[build]\njobs = 1\njbos = 2\n").unwrap();
        assert_eq!((u.section.as_str(), u.key.as_str()), ("build", "jbos"));
        assert_eq!(u.suggestion, Some(Suggestion::Similar("jobs".into())));
    }

    #[test]
    fn kebab_case_key_suggests_the_snake_case_one() {
        let u = unknown("[repo]\nssh-key = \"k\"\n").unwrap();
        assert_eq!(u.suggestion, Some(Suggestion::Similar("ssh_key".into())));
    }

    #[test]
    fn key_in_the_wrong_section_names_the_right_one() {
        let u = unknown("[repo]\ncatch_up = false\n").unwrap();
        assert_eq!(u.suggestion, Some(Suggestion::InSection("schedule".into())));
    }

    #[test]
    fn first_unknown_key_in_file_order_is_reported() {
        let u = unknown("[repo]\nzzz = 1\n[build]\naaa = 1\n").unwrap();
        assert_eq!(u.key, "zzz");
    }

    #[test]
    fn nix_options_keys_are_not_checked_and_datetimes_are_leaves() {
        let text = "[build.nix_options]\nanything-goes = \"1\"\n[hooks]\ntimeout = 1979-05-27\n";
        let (index, unknown) = KeyIndex::parse(text).unwrap();
        assert!(unknown.is_none());
        assert!(index.get("build.nix_options.anything-goes").is_some());
    }
}
