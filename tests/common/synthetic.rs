//! A synthetic cache written straight into a directory: signed narinfos and small NARs in
//! Nix's layout, for GC tests and the GC benchmark (20,000 paths without building them).

use std::path::Path;
use std::time::{Duration, SystemTime};

use nixfarm::cache::generations::{Generation, MACHINES_DIR};
use nixfarm::cache::{NarHash, NarInfo, SigningKey};
use nixfarm::types::StorePath;

/// A store path whose hash is derived from `seed` (valid nixbase32, 32 characters).
pub fn store_path(seed: &str, name: &str) -> StorePath {
    let hash = NarHash::digest(seed.as_bytes()).to_nixbase32();
    format!("/nix/store/{}-{name}", &hash[..32])
        .parse()
        .unwrap()
}

/// Writes `n` paths named `<prefix>-<i>`; path `i` refers to up to three earlier paths of
/// this batch (a layered graph, like real closures). Files get an mtime `age` ago.
/// Returns the paths in order (references first).
pub fn fill(
    cache: &Path,
    key: &SigningKey,
    prefix: &str,
    n: usize,
    age: Duration,
) -> Vec<StorePath> {
    std::fs::create_dir_all(cache.join("nar")).unwrap();
    let mtime = SystemTime::now() - age;
    let mut paths: Vec<StorePath> = Vec::with_capacity(n);
    for i in 0..n {
        let path = store_path(&format!("{prefix}-{i}"), &format!("{prefix}-{i}"));
        let mut references: Vec<StorePath> = [i / 2, i / 3, i.saturating_sub(1)]
            .iter()
            .filter(|&&j| j < i)
            .map(|&j| paths[j].clone())
            .collect();
        references.sort();
        references.dedup();
        let nar = format!("nar of {path}\n").into_bytes();
        let file_hash = NarHash::digest(&nar);
        let url = format!("nar/{}.nar", file_hash.to_nixbase32());
        let mut info = NarInfo {
            store_path: path.clone(),
            url: url.clone(),
            compression: "none".into(),
            file_hash: None,
            file_size: Some(nar.len() as u64),
            nar_hash: file_hash,
            nar_size: nar.len() as u64,
            references,
            deriver: None,
            sigs: vec![],
            ca: None,
        };
        info.sign(key);
        let narinfo = cache.join(format!("{}.narinfo", path.hash_part()));
        for (file, bytes) in [
            (cache.join(&url), nar),
            (narinfo, info.to_string().into_bytes()),
        ] {
            std::fs::write(&file, bytes).unwrap();
            let f = std::fs::File::options().write(true).open(&file).unwrap();
            f.set_modified(mtime).unwrap();
        }
        paths.push(path);
    }
    paths
}

/// Writes a generation record as another farm would (signed, `days_ago` old).
pub fn write_generation(
    cache: &Path,
    key: &SigningKey,
    farm: &str,
    machine: &str,
    toplevel: &StorePath,
    days_ago: i64,
) {
    let mut g = Generation {
        farm: farm.into(),
        machine: machine.parse().unwrap(),
        toplevel: toplevel.clone(),
        rev: None,
        time: chrono::Utc::now().timestamp() - days_ago * 86_400,
        run: 1,
        sigs: vec![],
    };
    g.sign(std::slice::from_ref(key));
    let dir = cache.join(MACHINES_DIR).join(machine);
    std::fs::create_dir_all(&dir).unwrap();
    let file = cache.join(g.file());
    std::fs::write(file, serde_json::to_vec_pretty(&g).unwrap()).unwrap();
}
