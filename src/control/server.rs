//! Serving the control protocol on a Unix socket. Every connection is its own task; a
//! malformed, oversized or unknown request gets an error line and the daemon carries on.
//! The peer's uid and pid (SO_PEERCRED) are logged and become the run's "requested by".

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, info, warn};

use super::protocol::{self, Event, Line, Reply, Request, MAX_REQUEST_BYTES};
use crate::daemon::service::{Daemon, TriggerRequest};
use crate::record::Trigger;

/// The listening socket: from systemd (`LISTEN_FDS`, fd 3) when socket-activated, else bound
/// at `path` with mode 0660 (a stale socket file from a dead daemon is replaced; a live one
/// is an error).
pub fn listen(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(listener) = from_systemd()? {
        info!("control socket passed by systemd (socket activation)");
        return Ok(listener);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create `{}` for the control socket", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another farmd is already serving the control socket `{}`; stop it first",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket `{}`", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| {
        format!(
            "cannot bind the control socket `{}`; set `[control] socket` to a writable place",
            path.display()
        )
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set the mode of `{}`", path.display()))?;
    Ok(listener)
}

/// sd_listen_fds(3) for one socket: LISTEN_PID must be us; the fd is 3.
fn from_systemd() -> anyhow::Result<Option<UnixListener>> {
    use std::os::fd::FromRawFd;
    let pid_matches = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let fds = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    if !pid_matches || fds == 0 {
        return Ok(None);
    }
    if fds > 1 {
        warn!(fds, "systemd passed more than one socket; using the first");
    }
    // Safety: systemd passed fd 3 to this process for exactly this use; nothing else owns it.
    let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(3) };
    std_listener.set_nonblocking(true)?;
    // Close-on-exec, so hooks and nix do not inherit it.
    rustix::io::fcntl_setfd(&std_listener, rustix::io::FdFlags::CLOEXEC)?;
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // Safety: called at start-up before other threads read the environment.
        unsafe { std::env::remove_var(var) };
    }
    Ok(Some(UnixListener::from_std(std_listener)?))
}

/// Accepts connections until the daemon shuts down.
pub async fn serve(
    listener: UnixListener,
    daemon: Arc<Daemon>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "cannot accept a control connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let daemon = daemon.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, &daemon).await {
                debug!(error = %format!("{e:#}"), "control connection ended with an error");
            }
        });
    }
}

/// Who is on the other end, as recorded in the history.
fn peer(stream: &UnixStream) -> String {
    match stream.peer_cred() {
        Ok(cred) => {
            let pid = cred.pid();
            let comm = pid
                .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).ok())
                .map(|c| c.trim().to_owned());
            match (pid, comm) {
                (Some(pid), Some(comm)) => format!("uid {} pid {pid} ({comm})", cred.uid()),
                (Some(pid), None) => format!("uid {} pid {pid}", cred.uid()),
                _ => format!("uid {}", cred.uid()),
            }
        }
        Err(_) => "unknown peer".to_owned(),
    }
}

async fn connection(stream: UnixStream, daemon: &Daemon) -> anyhow::Result<()> {
    let who = peer(&stream);
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_REQUEST_BYTES as u64 + 1));
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).await?;
    if line.len() > MAX_REQUEST_BYTES {
        warn!(peer = %who, "control request too large; refused");
        write
            .write_all(
                &Line::error(format!(
                    "request too large (over {MAX_REQUEST_BYTES} bytes)"
                ))
                .to_wire(),
            )
            .await?;
        return Ok(());
    }
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(()); // a connect-and-close probe
    }
    let request = match protocol::parse_request(&line) {
        Ok(r) => r,
        Err(message) => {
            warn!(peer = %who, error = %message, "bad control request");
            write.write_all(&Line::error(message).to_wire()).await?;
            return Ok(());
        }
    };
    debug!(peer = %who, ?request, "control request");
    let last = match handle(request, daemon, &who, &mut write).await {
        Ok(reply) => Line::ok(reply),
        Err(e) => Line::error(format!("{e:#}")),
    };
    write.write_all(&last.to_wire()).await?;
    Ok(())
}

async fn send(write: &mut (impl AsyncWriteExt + Unpin), event: Event) -> anyhow::Result<()> {
    write.write_all(&Line::event(event).to_wire()).await?;
    Ok(())
}

async fn handle(
    request: Request,
    daemon: &Daemon,
    who: &str,
    write: &mut (impl AsyncWriteExt + Unpin),
) -> anyhow::Result<Reply> {
    match request {
        Request::Status {} => Ok(Reply::Status(Box::new(daemon.status()?))),
        Request::History { limit } => Ok(Reply::History {
            runs: daemon.history().list(limit)?,
        }),
        Request::Show { run } => match daemon.history().get(run)? {
            Some(record) => Ok(Reply::Show {
                record: Box::new(record),
            }),
            None => bail!("there is no run {run}; `farmctl history` lists them"),
        },
        Request::Cancel {} => {
            let run = daemon.cancel(who);
            Ok(Reply::Cancelled { run })
        }
        Request::Trigger {
            machines,
            no_update,
            wait,
        } => {
            // Subscribe before queueing so the run's start cannot slip past us.
            let mut events = daemon.subscribe();
            info!(peer = %who, ?machines, no_update, "trigger");
            let (ticket, position) = daemon.trigger(TriggerRequest {
                trigger: Trigger::Manual,
                requested_by: Some(who.to_owned()),
                machines,
                update: !no_update,
            });
            if !wait {
                return Ok(Reply::Triggered {
                    ticket,
                    position,
                    record: None,
                });
            }
            send(write, Event::Accepted { ticket, position }).await?;
            let mut run = None;
            loop {
                let event = match events.recv().await {
                    Ok(e) => e,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        debug!(missed = n, "a waiting client fell behind; progress skipped");
                        continue;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        bail!("farmd is shutting down")
                    }
                };
                match &event {
                    Event::Started { run: id, tickets } if tickets.contains(&ticket) => {
                        run = Some(*id);
                        send(write, event).await?;
                    }
                    Event::Progress { run: id, .. } if Some(*id) == run => {
                        send(write, event).await?;
                    }
                    Event::Finished { record } if Some(record.id) == run => {
                        return Ok(Reply::Triggered {
                            ticket,
                            position,
                            record: Some(record.clone()),
                        });
                    }
                    _ => {}
                }
            }
        }
        Request::Log {
            run,
            machine,
            follow,
        } => {
            let record = daemon
                .history()
                .get(run)?
                .with_context(|| format!("there is no run {run}; `farmctl history` lists them"))?;
            let path = record.machine_log(&machine).map_err(anyhow::Error::msg)?;
            stream_log(Path::new(path), follow.then_some((daemon, run)), write).await
        }
    }
}

/// Sends the log file; with `follow`, keeps sending what is appended while the run is active.
async fn stream_log(
    path: &Path,
    follow: Option<(&Daemon, crate::record::RunId)>,
    write: &mut (impl AsyncWriteExt + Unpin),
) -> anyhow::Result<Reply> {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && follow.is_some() => {
            // Not started yet: wait for it while the run is active.
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                if let Ok(f) = tokio::fs::File::open(path).await {
                    break f;
                }
                if !follow.is_some_and(|(d, run)| d.is_active_run(run)) {
                    bail!("the log `{}` does not exist", path.display());
                }
            }
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read `{}`", path.display())),
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).await?;
        if n > 0 {
            send(
                write,
                Event::Log {
                    text: String::from_utf8_lossy(&buf[..n]).into_owned(),
                },
            )
            .await?;
            continue;
        }
        match follow {
            // The file may be written by nix for a while yet: poll while the run is active.
            // (inotify would be nicer; a follower is a person at a terminal, 250 ms is fine.)
            Some((daemon, run)) if daemon.is_active_run(run) => {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            _ => {
                return Ok(Reply::Log {
                    text: String::new(),
                })
            }
        }
    }
}
