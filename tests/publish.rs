//! The publish phase judged by the real Nix client: farmctl publishes the fixture fleet's
//! closures over SFTP to a real sshd, a real nginx serves the directory, and `nix-store -r`
//! substitutes every closure into an empty store with `require-sigs`; `nix store verify` and
//! `nix copy`'s own output are the references for signatures and narinfos.

mod common;

use std::path::PathBuf;

use common::{closure_problems, stderr_of, stdout_of, substitute, temporaries, CacheBed, Nginx};

#[test]
fn fleet_closures_substitute_from_the_sftp_cache_with_require_sigs() {
    let bed = CacheBed::new();
    let toplevels = bed.toplevels();
    let summary = bed.publish_ok(&toplevels);
    let closure = bed.closure(&toplevels);
    assert_eq!(summary["closure_paths"], closure.len());
    assert_eq!(summary["uploaded_paths"], closure.len());
    assert_eq!(summary["roots"].as_array().unwrap().len(), 3);
    assert!(summary["failed"].as_array().unwrap().is_empty());
    assert_eq!(closure_problems(&bed.cache), Vec::<String>::new());
    assert_eq!(temporaries(&bed.cache), Vec::<PathBuf>::new());
    let info = std::fs::read_to_string(bed.cache.join("nix-cache-info")).unwrap();
    assert_eq!(
        info,
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"
    );

    let nginx = Nginx::serve(&bed.cache);
    let clients = tempfile::tempdir().unwrap();
    for (i, top) in toplevels.iter().enumerate() {
        let store = clients.path().join(format!("store-{i}"));
        let out = substitute(&bed, &nginx, &store, top, &bed.public_key);
        assert!(
            out.status.success(),
            "substituting {top}:\n{}",
            stderr_of(&out)
        );
        for path in bed.closure(std::slice::from_ref(top)) {
            assert!(
                store.join(path.trim_start_matches('/')).exists(),
                "{path} not substituted"
            );
        }
    }

    // Another key: the client must refuse every path.
    let (_, wrong) = nixfarm::cache::generate_keypair("farm-test-1").unwrap();
    let store = clients.path().join("store-wrong-key");
    let out = substitute(&bed, &nginx, &store, &toplevels[0], &wrong.to_string());
    assert!(!out.status.success(), "substituted with the wrong key");
    assert!(!store.join(toplevels[0].trim_start_matches('/')).exists());

    // Nix's own verification and ours agree that everything is signed and complete.
    bed.assert_nix_verifies(&toplevels);
    let out = bed.farm.farmctl(&bed.fleet, ["cache", "verify", "--deep"]);
    bed.assert_verify_clean(&out);
}

#[test]
fn signatures_and_narinfos_match_nix_copy() {
    let bed = CacheBed::new();
    let toplevels = bed.toplevels();
    bed.publish_ok(&toplevels[..1]);
    let theirs = tempfile::tempdir().unwrap();
    let to = format!(
        "file://{}?compression=zstd&secret-key={}",
        theirs.path().display(),
        bed.secret_key.display()
    );
    bed.fleet.env().nix(["copy", "--to", &to, &toplevels[0]]);
    let strip = |text: &str| -> String {
        text.lines()
            .filter(|l| {
                !["URL:", "FileHash:", "FileSize:"]
                    .iter()
                    .any(|k| l.starts_with(k))
            })
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let closure = bed.closure(&toplevels[..1]);
    for path in &closure {
        let hash = &path["/nix/store/".len()..][..32];
        let ours = std::fs::read_to_string(bed.cache.join(format!("{hash}.narinfo"))).unwrap();
        let nix = std::fs::read_to_string(theirs.path().join(format!("{hash}.narinfo"))).unwrap();
        assert_eq!(strip(&ours), strip(&nix), "narinfo of {path}");
        assert!(ours.contains("\nSig: farm-test-1:"), "{ours}");
    }
}

#[test]
fn world_readable_and_malformed_keys_are_refused_before_anything_is_written() {
    let bed = CacheBed::new();
    let toplevels = bed.toplevels();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&bed.secret_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (out, _) = bed.publish(&toplevels);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.contains(&format!("run `chmod 600 {}`", bed.secret_key.display())),
        "{err}"
    );

    std::fs::write(&bed.secret_key, "farm-test-1:not base64!").unwrap();
    std::fs::set_permissions(&bed.secret_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (out, _) = bed.publish(&toplevels);
    let err = stderr_of(&out);
    assert!(!out.status.success());
    assert!(err.contains("is not a Nix secret key file"), "{err}");
    assert!(!bed.cache.exists(), "nothing may be written with a bad key");
}

/// `cache verify --deep` streams each NAR through the decompressor and both hashes: a 96 MiB
/// NAR is checked in far less memory than its size, and one flipped byte (same FileSize, so
/// the shallow check passes) is found and named.
#[test]
fn deep_verify_streams_big_nars_and_finds_a_flipped_byte() {
    const MIB: usize = 96;
    let bed = CacheBed::new();
    let path = bed.random_chain(1, MIB);
    bed.publish_ok(std::slice::from_ref(&path));

    // Peak RSS of farmctl itself (/usr/bin/time, from tests/setup-debian.sh).
    let deep_verify = || {
        let config = bed.farm.write_config();
        let mut cmd = bed.fleet.env().command("/usr/bin/time");
        cmd.args(["-f", "maxrss-kib %M"])
            .arg(env!("CARGO_BIN_EXE_farmctl"))
            .arg("--config")
            .arg(&config)
            .args(["cache", "verify", "--deep"]);
        let out = common::run_unchecked(&mut cmd);
        let rss_kib: u64 = stderr_of(&out)
            .lines()
            .filter_map(|l| l.strip_prefix("maxrss-kib "))
            .next_back()
            .expect("/usr/bin/time's line")
            .trim()
            .parse()
            .unwrap();
        (out, rss_kib)
    };
    let (out, rss_kib) = deep_verify();
    bed.assert_verify_clean(&out);
    eprintln!("cache verify --deep of a {MIB} MiB NAR: peak RSS {rss_kib} KiB");
    assert!(
        rss_kib < (MIB as u64 / 2) * 1024,
        "verify --deep peaked at {rss_kib} KiB for a {MIB} MiB NAR: it holds NARs in memory"
    );

    // Flip one byte in the middle of the NAR file: the size still matches.
    let hash = path
        .trim_start_matches("/nix/store/")
        .split('-')
        .next()
        .unwrap();
    let narinfo = std::fs::read_to_string(bed.cache.join(format!("{hash}.narinfo"))).unwrap();
    let url = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .to_owned();
    let nar = bed.cache.join(&url);
    let mut bytes = std::fs::read(&nar).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&nar, &bytes).unwrap();

    let shallow = bed.farm.farmctl(&bed.fleet, ["cache", "verify"]);
    assert!(shallow.status.success(), "{}", stdout_of(&shallow));
    let (out, _) = deep_verify();
    assert!(!out.status.success(), "a flipped byte passed --deep");
    let report = stdout_of(&out);
    assert!(
        report.contains(&format!("{hash}.narinfo"))
            && report.contains(&format!("its NAR `{url}` hashes to")),
        "{report}"
    );
}
