//! The publisher under failure, against real components: `kill -9` of farmctl at random
//! moments, SFTP sessions cut mid-upload, a full and a read-only remote file system, an
//! unknown host key and a closed port. After each, no narinfo in the cache may lack its NAR or
//! a reference's narinfo, and the next publish completes the cache and cleans up.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::{closure_problems, run, stderr_of, stdout_of, temporaries, CacheBed};

/// farmctl publish ROOTS, started in the background.
fn spawn_publish(bed: &CacheBed, roots: &[String]) -> std::process::Child {
    let config = bed.farm.write_config();
    bed.fleet
        .env()
        .command(env!("CARGO_BIN_EXE_farmctl"))
        .arg("--config")
        .arg(config)
        .arg("publish")
        .args(roots)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start farmctl publish")
}

fn random_ms(lo: u64, hi: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    lo + (nanos.wrapping_mul(6364136223846793005) >> 7) % (hi - lo)
}

#[track_caller]
fn assert_complete_and_clean(bed: &CacheBed, roots: &[String]) {
    let summary = bed.publish_ok(roots);
    assert_eq!(
        summary["failed"].as_array().unwrap().len(),
        0,
        "{summary:#}"
    );
    assert_eq!(closure_problems(&bed.cache), Vec::<String>::new());
    assert_eq!(temporaries(&bed.cache), Vec::<PathBuf>::new());
    let out = bed.farm.farmctl(&bed.fleet, ["cache", "verify", "--deep"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        stdout_of(&out),
        stderr_of(&out)
    );
}

#[test]
fn kill_9_at_random_moments_never_breaks_a_closure() {
    let bed = CacheBed::new();
    let roots = vec![bed.random_chain(10, 8)];
    let mut killed_mid_publish = 0;
    // Early windows first: once a publish completes, later rounds have nothing left to do, so
    // a fast publisher would otherwise outrun every kill.
    for (round, (lo, hi)) in [(50, 600), (200, 1200), (400, 2000), (150, 2500)]
        .into_iter()
        .enumerate()
    {
        let mut child = spawn_publish(&bed, &roots);
        let ms = random_ms(lo, hi);
        std::thread::sleep(Duration::from_millis(ms));
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        killed_mid_publish += usize::from(status.code().is_none());
        let problems = closure_problems(&bed.cache);
        assert_eq!(
            problems,
            Vec::<String>::new(),
            "round {round}, killed after {ms} ms ({status})"
        );
    }
    assert!(
        killed_mid_publish > 0,
        "every publish finished before its kill"
    );
    assert_complete_and_clean(&bed, &roots);
}

#[test]
fn cutting_the_sftp_sessions_mid_upload_is_reported_and_repaired() {
    let bed = CacheBed::new();
    let roots = vec![bed.random_chain(6, 8)];
    let child = spawn_publish(&bed, &roots);
    let deadline = Instant::now() + Duration::from_secs(60);
    while temporaries(&bed.cache)
        .iter()
        .all(|t| !t.starts_with(bed.cache.join("nar")))
    {
        assert!(Instant::now() < deadline, "no upload started");
        std::thread::sleep(Duration::from_millis(5));
    }
    bed.sshd.cut_sessions();
    let out = child.wait_with_output().unwrap();
    let err = stderr_of(&out);
    assert!(
        !out.status.success(),
        "publish survived a cut session?\n{err}"
    );
    assert!(err.contains("lost the connection"), "{err}");
    assert_eq!(closure_problems(&bed.cache), Vec::<String>::new());
    assert_complete_and_clean(&bed, &roots);
}

/// A tmpfs mounted at `path` (with `opts`), unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, opts: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(path));
        Tmpfs(path.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn full_remote_disk_is_reported_and_nothing_published_is_damaged() {
    let bed = CacheBed::new();
    let _fs = Tmpfs::mount(&bed.cache, "size=3m");
    let toplevels = bed.toplevels();
    bed.publish_ok(&toplevels);
    let before: Vec<_> = std::fs::read_dir(&bed.cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();

    let (out, _) = bed.publish(&[bed.random_chain(3, 2)]);
    let err = stderr_of(&out);
    assert!(!out.status.success());
    assert!(err.contains("disk full"), "{err}");
    assert_eq!(closure_problems(&bed.cache), Vec::<String>::new());
    for path in before {
        assert!(path.exists(), "{} disappeared", path.display());
    }
    // What was published before is still whole and correctly signed.
    bed.assert_nix_verifies(&toplevels);
}

#[test]
fn read_only_remote_directory_is_a_clear_error() {
    let bed = CacheBed::new();
    let _fs = Tmpfs::mount(&bed.cache, "ro,size=1m");
    let (out, _) = bed.publish(&bed.toplevels());
    let err = stderr_of(&out);
    assert!(!out.status.success());
    assert!(err.contains(&bed.cache.display().to_string()), "{err}");
    assert!(err.contains("cannot"), "{err}");
}

#[test]
fn unknown_host_key_and_closed_port_are_clear_errors() {
    let mut bed = CacheBed::new();
    let toplevels = bed.toplevels();
    let empty = bed.farm.dir().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    bed.farm.config.set(
        "cache",
        "ssh_known_hosts",
        &common::toml_str(empty.display().to_string()),
    );
    let (out, _) = bed.publish(&toplevels);
    let err = stderr_of(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("host key") && err.contains("127.0.0.1"),
        "{err}"
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("sftp://root@127.0.0.1:{closed}{}", bed.cache.display());
    let (out, _) = bed.publish(&[toplevels[0].clone(), "--to".into(), url]);
    let err = stderr_of(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot reach the cache host `127.0.0.1`"),
        "{err}"
    );
    assert!(!bed.cache.join("nix-cache-info").exists());
}
