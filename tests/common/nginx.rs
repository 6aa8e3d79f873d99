//! A real nginx on 127.0.0.1 serving one directory, the way a fleet's cache host serves the
//! binary cache, so the real Nix client can substitute from what farmd wrote.
//!
//! Debian's nginx runs with a config written into a temp dir (`daemon off`, `master_process
//! off`: one process, ours, killed and reaped on drop), its pid, logs and temp paths there too.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub struct Nginx {
    _dir: TempDir,
    port: u16,
    child: Child,
}

impl Nginx {
    /// Serves `root` on a free port; panics with nginx's error log if it does not come up.
    pub fn serve(root: &Path) -> Nginx {
        let dir = tempfile::Builder::new()
            .prefix("nixfarm-nginx-")
            .tempdir()
            .expect("nginx temp dir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("tmp")).unwrap();
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        let conf = format!(
            "daemon off;\nmaster_process off;\nuser root;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nevents {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/tmp/body;\n  \
             proxy_temp_path {d}/tmp/proxy;\n  fastcgi_temp_path {d}/tmp/fastcgi;\n  \
             uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n  \
             default_type application/octet-stream;\n  \
             server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n",
            d = d.display(),
            root = root.display()
        );
        std::fs::write(d.join("nginx.conf"), conf).unwrap();
        let mut child = Command::new("/usr/sbin/nginx")
            .arg("-p")
            .arg(d)
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start /usr/sbin/nginx (Debian: nginx-light)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(d.join("error.log")).unwrap_or_default();
                panic!("nginx exited ({status}):\n{log}");
            }
            assert!(Instant::now() < deadline, "nginx not listening after 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx {
            _dir: dir,
            port,
            child,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
