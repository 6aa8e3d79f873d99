//! `nix path-info --json --recursive`: what the local store records about every path of a
//! closure (narHash, narSize, references, deriver, signatures, content address), parsed into
//! [`PathInfo`]s at the border.
//!
//! Two shapes exist. Nix 2.8 prints an array of objects that carry their own `"path"` (and
//! `"valid": false` for a path it does not have); Nix ≥ 2.19 prints an object keyed by path
//! (with `null` for an invalid path). Newer Nix may also write references as base names and
//! the content address as `{ "method", "hash" }`; both are accepted. Recorded and documented
//! examples of each live in `tests/fixtures/`.

use serde::Deserialize;
use serde_json::Value;

use super::{NixCommand, NixError, NixOptions};
use crate::cache::NarHash;
use crate::process::Limits;
use crate::types::StorePath;

/// One valid path of the local store, as `nix path-info --json` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathInfo {
    pub path: StorePath,
    pub nar_hash: NarHash,
    pub nar_size: u64,
    /// Sorted; may include the path itself.
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
    pub signatures: Vec<String>,
    /// The narinfo `CA:` form (`fixed:r:sha256:…`, `text:sha256:…`).
    pub ca: Option<String>,
}

/// The closure of `roots` (every path they reference, recursively, and the roots), in the
/// order Nix printed it. A root the store does not have is an error naming it.
pub async fn closure(
    opts: &NixOptions,
    roots: &[StorePath],
    limits: Limits<'_>,
) -> Result<Vec<PathInfo>, NixError> {
    let cmd = NixCommand::new(opts)
        .args(["path-info", "--json", "--recursive"])
        .args(roots.iter().map(StorePath::as_str));
    let json: Value = cmd.json(limits).await?;
    parse(json).map_err(|error| NixError::BadOutput {
        command: cmd.to_string(),
        error,
    })
}

/// Parses either shape of `nix path-info --json` output.
pub fn parse(json: Value) -> Result<Vec<PathInfo>, String> {
    let entries: Vec<(String, Value)> = match json {
        Value::Array(items) => items
            .into_iter()
            .map(|item| {
                let path = item
                    .get("path")
                    .and_then(Value::as_str)
                    .ok_or("an array element has no \"path\"")?
                    .to_owned();
                Ok((path, item))
            })
            .collect::<Result<_, String>>()?,
        Value::Object(map) => map.into_iter().collect(),
        other => return Err(format!("expected an array or an object, found {other}")),
    };
    entries
        .into_iter()
        .map(|(path, value)| entry(&path, value))
        .collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawInfo {
    #[serde(default = "yes")]
    valid: bool,
    nar_hash: Option<Value>,
    nar_size: Option<u64>,
    #[serde(default)]
    references: Vec<String>,
    deriver: Option<String>,
    #[serde(default)]
    signatures: Vec<String>,
    ca: Option<Value>,
}

fn yes() -> bool {
    true
}

fn entry(path: &str, value: Value) -> Result<PathInfo, String> {
    let at = |why: String| format!("`{path}`: {why}");
    let this = store_path(path).map_err(at)?;
    if value.is_null() {
        return Err(at("not a valid path in the local store".into()));
    }
    let raw: RawInfo = serde_json::from_value(value).map_err(|e| at(e.to_string()))?;
    if !raw.valid {
        return Err(at("not a valid path in the local store".into()));
    }
    let nar_hash = hash(
        raw.nar_hash
            .as_ref()
            .ok_or_else(|| at("no narHash".into()))?,
    )
    .map_err(at)?;
    let nar_size = raw.nar_size.ok_or_else(|| at("no narSize".into()))?;
    let mut references = raw
        .references
        .iter()
        .map(|r| store_path(r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(at)?;
    references.sort();
    let deriver = match raw.deriver.as_deref() {
        None | Some("") => None,
        Some(d) => Some(store_path(d).map_err(at)?),
    };
    let ca = match raw.ca {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s),
        Some(obj) => Some(structured_ca(&obj).map_err(at)?),
    };
    Ok(PathInfo {
        path: this,
        nar_hash,
        nar_size,
        references,
        deriver,
        signatures: raw.signatures,
        ca,
    })
}

/// A full store path, or a base name (newer Nix's JSON leaves the store directory out).
fn store_path(s: &str) -> Result<StorePath, String> {
    if s.starts_with('/') {
        s.parse()
    } else {
        StorePath::from_base_name(s)
    }
    .map_err(|e| e.to_string())
}

/// A hash as a string (SRI or `sha256:…`) or as `{ "algorithm", "format", "hash" }`.
fn hash(v: &Value) -> Result<NarHash, String> {
    match v {
        Value::String(s) => s
            .parse()
            .map_err(|e: crate::cache::InvalidHash| e.to_string()),
        Value::Object(o) => {
            let field = |k: &str| o.get(k).and_then(Value::as_str);
            let (Some(alg), Some(text)) = (field("algorithm"), field("hash")) else {
                return Err(format!("hash object without algorithm and hash: {v}"));
            };
            if alg != "sha256" {
                return Err(format!("narHash uses {alg}, expected sha256"));
            }
            if text.starts_with("sha256") {
                return text
                    .parse()
                    .map_err(|e: crate::cache::InvalidHash| e.to_string());
            }
            let tagged = match field("format") {
                Some("base64") | None => format!("sha256-{text}"),
                Some(_) => format!("sha256:{text}"),
            };
            tagged
                .parse()
                .map_err(|e: crate::cache::InvalidHash| e.to_string())
        }
        other => Err(format!("unexpected hash {other}")),
    }
}

/// `{ "method": "nar"|"flat"|"text", "hash": … }` in narinfo's `CA:` notation.
fn structured_ca(v: &Value) -> Result<String, String> {
    let method = v.get("method").and_then(Value::as_str);
    let hash = v
        .get("hash")
        .ok_or_else(|| format!("content address without hash: {v}"))
        .and_then(hash)?;
    let prefix = match method {
        Some("nar") => "fixed:r:",
        Some("flat") => "fixed:",
        Some("text") => "text:",
        other => return Err(format!("unsupported content-address method {other:?}")),
    };
    Ok(format!("{prefix}{hash}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<PathInfo> {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        let mut infos = parse(serde_json::from_str(&text).unwrap()).unwrap();
        infos.sort_by(|a, b| a.path.cmp(&b.path));
        infos
    }

    /// Recorded from Nix 2.8: a root signed with `nix store sign`, a `builtins.toFile` text
    /// path (content-addressed) and an input-addressed leaf.
    #[test]
    fn parses_nix_2_8_array_output() {
        let infos = fixture("nix-2.8-path-info-recursive.json");
        assert_eq!(infos.len(), 3);
        let root = infos
            .iter()
            .find(|i| i.path.name() == "fixture-root")
            .unwrap();
        assert_eq!(root.nar_size, 232);
        assert_eq!(
            root.nar_hash.to_sri(),
            "sha256-rnmFXvpOBvP4RXZH+xTBg1gFjHk/nhSIeVXLCIOyWjU="
        );
        assert_eq!(root.references.len(), 2);
        assert!(root.deriver.as_ref().unwrap().name().ends_with(".drv"));
        assert_eq!(root.signatures.len(), 1);
        let script = infos
            .iter()
            .find(|i| i.path.name() == "fixture-script.sh")
            .unwrap();
        assert!(script.ca.as_deref().unwrap().starts_with("text:sha256:"));
        assert_eq!(script.deriver, None);
    }

    /// Hand-written after Nix's manual (≥ 2.19: an object keyed by path) for the same paths:
    /// both shapes must give the same closure.
    #[test]
    fn parses_nix_2_19_object_output_the_same() {
        assert_eq!(
            fixture("nix-2.19-path-info-recursive.json"),
            fixture("nix-2.8-path-info-recursive.json")
        );
    }

    #[test]
    fn invalid_paths_are_errors_naming_them() {
        let old =
            r#"[{"path":"/nix/store/00000000000000000000000000000000-missing","valid":false}]"#;
        let new = r#"{"/nix/store/00000000000000000000000000000000-missing":null}"#;
        for text in [old, new] {
            let err = parse(serde_json::from_str(text).unwrap()).unwrap_err();
            assert!(
                err.contains("00000000000000000000000000000000-missing"),
                "{err}"
            );
            assert!(err.contains("not a valid path"), "{err}");
        }
    }

    #[test]
    fn newer_structured_fields_are_understood() {
        let text = r#"{"/nix/store/m3nf20fxr98pivfi85ngjafwb8qd4d1a-fixture-script.sh": {
            "narHash": {"algorithm":"sha256","format":"base64","hash":"ZnHzCarjIV2nRDjA2Z5cFaASa+T6hxTWedKkZNaN/iA="},
            "narSize": 128, "references": [], "deriver": null, "signatures": [],
            "ca": {"method":"text","hash":"sha256:0xws616d3yldk6p77fy0vbiy38h9yqqsgsz2rcgcnbdhsqgk6jjq"}}}"#;
        let info = &parse(serde_json::from_str(text).unwrap()).unwrap()[0];
        let want = &fixture("nix-2.8-path-info-recursive.json")[1];
        assert_eq!(info, want);
    }
}
