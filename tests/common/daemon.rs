//! A real `farmd` (no `--once`) started by a test, with a `NOTIFY_SOCKET` the test owns, so
//! READY/STATUS/WATCHDOG/RELOADING/STOPPING messages are what the test reads.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::farm::Farm;
use super::fleet::Fleet;

pub struct RunningFarmd {
    child: Option<Child>,
    /// Every notification, in order, read by a thread that always drains the socket (as
    /// systemd does: a full socket would block farmd's sends).
    received: std::sync::mpsc::Receiver<String>,
    _notify_dir: tempfile::TempDir,
    pub messages: Vec<String>,
    pub stderr_path: PathBuf,
}

impl RunningFarmd {
    /// Starts farmd for `farm` with `extra_env` and waits for READY=1.
    pub fn start(farm: &Farm, fleet: &Fleet, extra_env: &[(&str, &str)]) -> RunningFarmd {
        let config = farm.write_config();
        let notify_dir = tempfile::tempdir().unwrap();
        let notify_path = notify_dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        let (tx, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = notify.recv(&mut buf) {
                if tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
                {
                    return;
                }
            }
        });
        let stderr_path = farm.dir().join("farmd.stderr");
        let mut cmd: Command = fleet.env().command(env!("CARGO_BIN_EXE_farmd"));
        cmd.arg("--config")
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        for (k, v) in &farm.env {
            cmd.env(k, v);
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn farmd");
        let mut farmd = RunningFarmd {
            child: Some(child),
            received,
            _notify_dir: notify_dir,
            messages: Vec::new(),
            stderr_path,
        };
        farmd.wait_for(Duration::from_secs(30), |m| {
            m.lines().any(|l| l == "READY=1")
        });
        farmd
    }

    /// `farmctl trigger` (no wait), then waits until `STATUS=` says `machine` is building.
    pub fn trigger_and_wait_building(&mut self, farm: &Farm, fleet: &Fleet, machine: &str) {
        let out = farm.farmctl(fleet, ["trigger"]);
        assert!(out.status.success(), "{}", super::process::stderr_of(&out));
        self.wait_for(Duration::from_secs(30), |m| {
            m.contains("STATUS=building") && m.contains(machine)
        });
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Reads notifications until one satisfies `pred` (returned) or the time is up (panics).
    pub fn wait_for(&mut self, within: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(msg) = self.received.recv_timeout(Duration::from_millis(200)) {
                self.messages.push(msg.clone());
                if pred(&msg) {
                    return msg;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "farmd exited ({status}) while waiting; messages: {:?}\n{}",
                    self.messages,
                    self.stderr()
                );
            }
        }
        panic!(
            "no matching notification within {within:?}; got {:?}\nstderr:\n{}",
            self.messages,
            self.stderr()
        );
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
    }

    /// Waits for farmd to exit and returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> i32 {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "farmd did not exit within {within:?}:\n{}",
                std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RunningFarmd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
