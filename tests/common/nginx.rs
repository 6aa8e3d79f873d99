//! A real nginx on 127.0.0.1 serving one directory, the way a fleet's cache host serves the
//! binary cache, so the real Nix client can substitute from what farmd wrote.
//!
//! Debian's nginx runs with a config written into a temp dir (`daemon off`, `master_process
//! off`: one process, ours, killed and reaped on drop), its pid, logs and temp paths there too.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
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
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        let server = format!(
            "default_type application/octet-stream;\n  \
             server {{ listen 127.0.0.1:{port}; root {root}; }}",
            root = root.display()
        );
        let child = start(d, port, &server, || true);
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

/// Runs nginx with its config, pid, logs and temp paths in `d` (one process, ours) and `http`
/// (the `server` block and any http-level directives) on `port`; returns once it listens and
/// `ready()` holds, or panics with its error log.
fn start(d: &Path, port: u16, http: &str, ready: impl Fn() -> bool) -> Child {
    std::fs::create_dir_all(d.join("tmp")).unwrap();
    let conf = format!(
        "daemon off;\nmaster_process off;\nuser root;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/tmp/body;\n  \
         proxy_temp_path {d}/tmp/proxy;\n  fastcgi_temp_path {d}/tmp/fastcgi;\n  \
         uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n  {http}\n}}\n",
        d = d.display()
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
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() || !ready() {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(d.join("error.log")).unwrap_or_default();
            panic!("nginx exited ({status}):\n{log}");
        }
        assert!(Instant::now() < deadline, "nginx not ready after 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// A git server over HTTPS the way a self-hosted forge runs one: nginx with TLS (a throwaway
/// self-signed certificate for 127.0.0.1) and HTTP basic auth in front of git's own
/// `git-http-backend` (CGI, through fcgiwrap), serving every repository under a directory.
/// Pushes are allowed to the authenticated user. Both processes are ours, killed on drop.
pub struct GitHttps {
    dir: TempDir,
    port: u16,
    nginx: Child,
    fcgiwrap: Child,
}

impl GitHttps {
    /// Serves the repositories under `project_root` to `user` with password `token`.
    pub fn serve(project_root: &Path, user: &str, token: &str) -> GitHttps {
        let dir = tempfile::Builder::new()
            .prefix("nixfarm-githttps-")
            .tempdir()
            .expect("git https temp dir");
        let d = dir.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .stdin(Stdio::null())
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ]);
        let hash = openssl(&["passwd", "-apr1", token]);
        std::fs::write(
            d.join("htpasswd"),
            format!("{user}:{}", String::from_utf8_lossy(&hash)),
        )
        .unwrap();

        let socket = d.join("fcgiwrap.sock");
        // Its own process group: fcgiwrap forks workers, and all of them go on drop.
        let fcgiwrap = Command::new("/usr/sbin/fcgiwrap")
            .process_group(0)
            .arg("-c")
            .arg("2")
            .arg("-s")
            .arg(format!("unix:{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start /usr/sbin/fcgiwrap (Debian: fcgiwrap)");

        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        let server = format!(
            "client_max_body_size 0;\n  \
             server {{\n    listen 127.0.0.1:{port} ssl;\n    \
             ssl_certificate {d}/cert.pem;\n    ssl_certificate_key {d}/key.pem;\n    \
             location / {{\n      auth_basic \"fleet\";\n      \
             auth_basic_user_file {d}/htpasswd;\n      \
             include /etc/nginx/fastcgi_params;\n      \
             fastcgi_param SCRIPT_FILENAME /usr/lib/git-core/git-http-backend;\n      \
             fastcgi_param GIT_PROJECT_ROOT {root};\n      \
             fastcgi_param GIT_HTTP_EXPORT_ALL \"\";\n      \
             fastcgi_param PATH_INFO $uri;\n      \
             fastcgi_param REMOTE_USER $remote_user;\n      \
             fastcgi_pass unix:{socket};\n    }}\n  }}",
            d = d.display(),
            root = project_root.display(),
            socket = socket.display(),
        );
        let nginx = start(d, port, &server, || socket.exists());
        GitHttps {
            dir,
            port,
            nginx,
            fcgiwrap,
        }
    }

    /// `https://127.0.0.1:PORT/NAME`.
    pub fn url(&self, name: &str) -> String {
        format!("https://127.0.0.1:{}/{name}", self.port)
    }

    /// The server's certificate: trust it with `SSL_CERT_FILE`.
    pub fn certificate(&self) -> std::path::PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// nginx's error log (auth failures, backend errors), for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for GitHttps {
    fn drop(&mut self) {
        let _ = self.nginx.kill();
        let _ = self.nginx.wait();
        let group = rustix::process::Pid::from_child(&self.fcgiwrap);
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        let _ = self.fcgiwrap.wait();
    }
}
