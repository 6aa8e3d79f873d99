//! farmctl's side of the control socket: send one request, hand streamed events to a
//! callback, return the final reply.

use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::protocol::{Body, Envelope, Event, Line, Reply, Request, VERSION};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach farmd at `{path}`: {source}; is it running (`systemctl status farmd`) and may you use its socket (group farmd)?")]
    Unreachable {
        path: String,
        source: std::io::Error,
    },
    #[error("farmd refused the request: {0}")]
    Refused(String),
    #[error("the connection to farmd broke: {0}")]
    Broken(String),
}

impl ClientError {
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }
}

/// Sends `request` to the daemon at `socket`; `on_event` sees every streamed event.
pub async fn call(
    socket: &Path,
    request: Request,
    mut on_event: impl FnMut(&Event),
) -> Result<Reply, ClientError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Unreachable {
            path: socket.display().to_string(),
            source,
        })?;
    let (read, mut write) = stream.into_split();
    let mut text = serde_json::to_vec(&Envelope {
        version: VERSION,
        request,
    })
    .expect("requests serialize");
    text.push(b'\n');
    write
        .write_all(&text)
        .await
        .map_err(|e| ClientError::Broken(e.to_string()))?;
    let mut lines = BufReader::new(read).lines();
    loop {
        let line = lines
            .next_line()
            .await
            .map_err(|e| ClientError::Broken(e.to_string()))?
            .ok_or_else(|| ClientError::Broken("farmd closed the connection".into()))?;
        let line: Line = serde_json::from_str(&line)
            .map_err(|e| ClientError::Broken(format!("unreadable answer ({e}): {line}")))?;
        if line.version != VERSION {
            return Err(ClientError::Broken(format!(
                "farmd speaks protocol version {}, this farmctl {VERSION}; use matching versions",
                line.version
            )));
        }
        match line.body {
            Body::Event(e) => on_event(&e),
            Body::Ok(reply) => return Ok(reply),
            Body::Error(message) => return Err(ClientError::Refused(message)),
        }
    }
}
