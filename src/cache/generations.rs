//! The GC roots, kept on the cache itself: a signed record of every machine generation a farm
//! published, and the pins an operator set by hand.
//!
//! ```text
//!  farmd/machines/<machine>/<time>-<farm>-<run>.json   one per published generation
//!  farmd/machines/<machine>/latest.json                the newest one written, again
//!  farmd/pins/<name>.json                              `farmctl cache pin`
//! ```
//!
//! Records live next to what they protect so that losing a farm's state directory, or two
//! farms sharing one cache, can never make GC delete a live closure: GC reads its roots from
//! here, never from local state. Each record is JSON signed with the cache's keys over a
//! canonical one-line text (like a narinfo fingerprint), and written by temp + rename.
//!
//! This module owns the records' format, names and signatures, writing them and reading them
//! all back ([`read_roots`]). Which records are kept is [`crate::cache::gc`]'s decision.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::backend::{is_temp_name, BackendError, CacheBackend, Entry};
use super::{PublicKey, SigningKey};
use crate::types::{MachineName, StorePath};

/// The directory of everything farmd keeps on the cache besides Nix's own files.
pub const FARMD_DIR: &str = "farmd";
pub const MACHINES_DIR: &str = "farmd/machines";
pub const PINS_DIR: &str = "farmd/pins";
/// The file in a machine's directory that repeats its newest record.
pub const LATEST: &str = "latest.json";

/// One published generation of one machine: a GC root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    /// Which farm wrote it ([`farm_id`]).
    pub farm: String,
    pub machine: MachineName,
    pub toplevel: StorePath,
    /// The flake revision it was built from.
    pub rev: Option<String>,
    /// Unix seconds when it was published.
    pub time: i64,
    /// The run that built it, in that farm's history.
    pub run: i64,
    /// `keyname:base64` signatures over [`Generation::fingerprint`].
    #[serde(default)]
    pub sigs: Vec<String>,
}

impl Generation {
    /// The canonical text signatures cover.
    pub fn fingerprint(&self) -> String {
        format!(
            "farmd-generation;1;{};{};{};{};{};{}",
            self.farm,
            self.machine,
            self.toplevel,
            self.rev.as_deref().unwrap_or(""),
            self.time,
            self.run
        )
    }

    /// The record's file, relative to the cache root. The time comes first (zero-padded) so
    /// names sort by age; farm and run keep two farms' records of one machine apart.
    pub fn file(&self) -> String {
        format!(
            "{MACHINES_DIR}/{}/{:012}-{}-{}.json",
            self.machine, self.time, self.farm, self.run
        )
    }

    pub fn sign(&mut self, keys: &[SigningKey]) {
        let fp = self.fingerprint();
        self.sigs = keys.iter().map(|k| k.sign(&fp)).collect();
    }

    pub fn is_signed_by_any(&self, keys: &[PublicKey]) -> bool {
        let fp = self.fingerprint();
        self.sigs.iter().any(|s| super::verify(keys, &fp, s))
    }
}

/// A root set by hand with `farmctl cache pin`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub name: PinName,
    pub path: StorePath,
    pub time: i64,
    #[serde(default)]
    pub sigs: Vec<String>,
}

impl Pin {
    pub fn fingerprint(&self) -> String {
        format!("farmd-pin;1;{};{};{}", self.name, self.path, self.time)
    }

    pub fn file(name: &PinName) -> String {
        format!("{PINS_DIR}/{name}.json")
    }

    pub fn sign(&mut self, keys: &[SigningKey]) {
        let fp = self.fingerprint();
        self.sigs = keys.iter().map(|k| k.sign(&fp)).collect();
    }
}

/// A pin's name: what is safe as a file name. ASCII letters, digits, `.`, `-` and `_`, not
/// starting with `.` or `-`, at most 100 bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PinName(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "pin name `{0}` is not valid: use 1 to 100 ASCII letters, digits, `.`, `-` and `_`, \
     not starting with `.` or `-`"
)]
pub struct InvalidPinName(String);

impl FromStr for PinName {
    type Err = InvalidPinName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 100
            && !s.starts_with(['.', '-'])
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if ok {
            Ok(PinName(s.to_owned()))
        } else {
            Err(InvalidPinName(s.escape_debug().to_string()))
        }
    }
}

impl TryFrom<String> for PinName {
    type Error = InvalidPinName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<PinName> for String {
    fn from(n: PinName) -> String {
        n.0
    }
}

impl fmt::Display for PinName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Names this farm in the records it writes: this host's [`host_tag`](super::backend::host_tag)
/// and a hash of the state directory, so two farms on one host differ and a farm keeps its
/// name when its state directory is lost and made again at the same place.
pub fn farm_id(state_dir: &std::path::Path) -> String {
    let digest = super::NarHash::digest(state_dir.as_os_str().as_encoded_bytes());
    let tail: String = digest.as_bytes()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{}{tail}", super::backend::host_tag())
}

/// Writes `generation` (signed with `keys`) and then the machine's `latest.json`, each via
/// temp + rename. Call it only after the toplevel's whole closure is in the cache.
pub async fn write_generation(
    backend: &Arc<dyn CacheBackend>,
    mut generation: Generation,
    keys: &[SigningKey],
) -> Result<Generation, BackendError> {
    generation.sign(keys);
    let dir = format!("{MACHINES_DIR}/{}", generation.machine);
    backend.mkdir_all(&dir).await?;
    let json = Bytes::from(serde_json::to_vec_pretty(&generation).expect("plain data"));
    backend
        .write_atomic(&generation.file(), json.clone())
        .await?;
    backend
        .write_atomic(&format!("{dir}/{LATEST}"), json)
        .await?;
    Ok(generation)
}

/// Writes (or replaces) a pin.
pub async fn write_pin(
    backend: &Arc<dyn CacheBackend>,
    mut pin: Pin,
    keys: &[SigningKey],
) -> Result<Pin, BackendError> {
    pin.sign(keys);
    backend.mkdir_all(PINS_DIR).await?;
    let json = Bytes::from(serde_json::to_vec_pretty(&pin).expect("plain data"));
    backend.write_atomic(&Pin::file(&pin.name), json).await?;
    Ok(pin)
}

/// Removes a pin; false when there was none of that name.
pub async fn remove_pin(
    backend: &Arc<dyn CacheBackend>,
    name: &PinName,
) -> Result<bool, BackendError> {
    let file = Pin::file(name);
    if backend.read(&file).await?.is_none() {
        return Ok(false);
    }
    backend.remove(&file).await?;
    Ok(true)
}

/// Every root on the cache, and the files around them GC may tidy.
#[derive(Debug, Default)]
pub struct Roots {
    /// Each record file and what it says (`latest.json` files included).
    pub generations: Vec<(String, Generation)>,
    pub pins: Vec<(String, Pin)>,
    /// Temporaries in the record directories (`path`, entry).
    pub temporaries: Vec<(String, Entry)>,
}

/// Something under `farmd/` that GC cannot read as a root. GC stops rather than guess what
/// it protected.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(
        "the GC root `{file}` on the cache cannot be read ({why}); GC does not know what it \
         protects and deletes nothing: fix or remove that file"
    )]
    Unreadable { file: String, why: String },
}

/// Reads every generation record and pin, `in_flight` reads at a time.
pub async fn read_roots(
    backend: &Arc<dyn CacheBackend>,
    in_flight: usize,
) -> Result<Roots, RootError> {
    let mut roots = Roots::default();
    let mut files = Vec::new();
    let (machines, pins) = tokio::join!(
        list_if_exists(backend, MACHINES_DIR),
        list_if_exists(backend, PINS_DIR)
    );
    let mut dirs = Vec::new();
    for e in machines? {
        if is_temp_name(&e.name) {
            roots
                .temporaries
                .push((format!("{MACHINES_DIR}/{}", e.name), e));
        } else if e.is_dir {
            dirs.push(format!("{MACHINES_DIR}/{}", e.name));
        }
    }
    let listings = super::gc::read::map_in_flight(dirs, in_flight, |dir| {
        let backend = Arc::clone(backend);
        async move { list_if_exists(&backend, &dir).await.map(|l| (dir, l)) }
    })
    .await;
    for listing in listings {
        let (dir, entries) = listing?;
        for e in entries {
            let path = format!("{dir}/{}", e.name);
            if is_temp_name(&e.name) {
                roots.temporaries.push((path, e));
            } else if !e.is_dir && e.name.ends_with(".json") {
                files.push((path, true));
            }
        }
    }
    for e in pins? {
        let path = format!("{PINS_DIR}/{}", e.name);
        if is_temp_name(&e.name) {
            roots.temporaries.push((path, e));
        } else if !e.is_dir && e.name.ends_with(".json") {
            files.push((path, false));
        }
    }
    let read = super::gc::read::map_in_flight(files, in_flight, |(path, is_generation)| {
        let backend = Arc::clone(backend);
        async move {
            let bytes = backend.read(&path).await;
            (path, is_generation, bytes)
        }
    })
    .await;
    for (file, is_generation, bytes) in read {
        // Gone since the listing (an unpin, another GC): it protects nothing any more.
        let Some(bytes) = bytes? else { continue };
        let unreadable = |e: serde_json::Error| RootError::Unreadable {
            file: file.clone(),
            why: e.to_string(),
        };
        if is_generation {
            let g: Generation = serde_json::from_slice(&bytes).map_err(unreadable)?;
            roots.generations.push((file, g));
        } else {
            let p: Pin = serde_json::from_slice(&bytes).map_err(unreadable)?;
            roots.pins.push((file, p));
        }
    }
    roots.generations.sort_by(|a, b| a.0.cmp(&b.0));
    roots.pins.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(roots)
}

/// A directory's entries; none when it does not exist (no record was ever written).
pub(crate) async fn list_if_exists(
    backend: &Arc<dyn CacheBackend>,
    dir: &str,
) -> Result<Vec<Entry>, BackendError> {
    match backend.list(dir).await {
        Ok(entries) => Ok(entries),
        Err(BackendError::NotFound { .. }) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation() -> Generation {
        Generation {
            farm: "0123456789abcdef0123".into(),
            machine: "pi3".parse().unwrap(),
            toplevel: format!("/nix/store/{}-nixos-system-pi3", "a".repeat(32))
                .parse()
                .unwrap(),
            rev: Some("c0ffee".into()),
            time: 1_700_000_000,
            run: 42,
            sigs: vec![],
        }
    }

    #[test]
    fn a_generation_is_signed_over_its_canonical_text() {
        let (secret, public) = crate::cache::generate_keypair("test-1").unwrap();
        let key: SigningKey = secret.parse().unwrap();
        let mut g = generation();
        assert_eq!(
            g.fingerprint(),
            format!(
                "farmd-generation;1;0123456789abcdef0123;pi3;{};c0ffee;1700000000;42",
                g.toplevel
            )
        );
        g.sign(std::slice::from_ref(&key));
        assert!(g.is_signed_by_any(std::slice::from_ref(&public)));
        let json = serde_json::to_string(&g).unwrap();
        let back: Generation = serde_json::from_str(&json).unwrap();
        assert_eq!(back, g);
        let mut forged = g.clone();
        forged.toplevel = format!("/nix/store/{}-evil", "b".repeat(32))
            .parse()
            .unwrap();
        assert!(!forged.is_signed_by_any(&[public]));
    }

    #[test]
    fn record_files_sort_by_time() {
        let mut a = generation();
        a.time = 999;
        let mut b = generation();
        b.time = 1_000;
        assert!(a.file() < b.file(), "{} {}", a.file(), b.file());
        assert!(a.file().starts_with("farmd/machines/pi3/000000000999-"));
    }

    #[test]
    fn pin_names_are_safe_file_names() {
        for ok in ["release-2024.05", "keep_me", "a"] {
            ok.parse::<PinName>().unwrap();
        }
        for bad in ["", ".hidden", "-x", "a/b", "a b", &"x".repeat(101)] {
            assert!(bad.parse::<PinName>().is_err(), "{bad}");
        }
    }
}
