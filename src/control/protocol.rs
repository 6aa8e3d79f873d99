//! The control socket's wire protocol: newline-delimited JSON, one request per connection
//! line, one or more response lines. Every line carries the protocol version, so a farmctl
//! and a farmd of different versions fail with a clear message instead of misreading each
//! other.
//!
//! ```text
//! → {"version":1,"verb":"trigger","machines":["pi3"],"wait":true}
//! ← {"version":1,"event":{"kind":"accepted","ticket":7,"position":"queued"}}
//! ← {"version":1,"event":{"kind":"progress", …}}            (streaming verbs only)
//! ← {"version":1,"ok":{…}}            or   {"version":1,"error":"…"}   (always last)
//! ```

use serde::{Deserialize, Serialize};

use crate::history::MachineSummary;
use crate::record::{MachineRecord, Phase, RunId, RunRecord, Trigger};
use crate::types::MachineName;

pub const VERSION: u32 = 1;

/// Requests larger than this are refused (and the connection closed): nothing legitimate is
/// anywhere near it.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u32,
    #[serde(flatten)]
    pub request: Request,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    // `{}` rather than unit variants: serde's internally tagged unit variants ignore extra
    // fields, and a misspelt field must be an error.
    Status {},
    Trigger {
        /// Only these machines (empty: all).
        #[serde(default)]
        machines: Vec<MachineName>,
        /// Skip the update phase.
        #[serde(default)]
        no_update: bool,
        /// Stream progress until the run this trigger leads to ends.
        #[serde(default)]
        wait: bool,
    },
    History {
        #[serde(default = "default_history_limit")]
        limit: usize,
    },
    Show {
        run: RunId,
    },
    Log {
        run: RunId,
        machine: MachineName,
        /// Keep streaming while the run is active.
        #[serde(default)]
        follow: bool,
    },
    Cancel {},
}

fn default_history_limit() -> usize {
    20
}

/// A streamed line before the final answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Event {
    /// The trigger was accepted; `ticket` identifies it in `started` events.
    Accepted { ticket: u64, position: Position },
    /// A run began; it serves these tickets.
    Started { run: RunId, tickets: Vec<u64> },
    /// A run's phase or a machine changed.
    Progress {
        run: RunId,
        phase: Option<Phase>,
        machines: Vec<MachineRecord>,
    },
    /// A run ended; the whole record.
    Finished { record: Box<RunRecord> },
    /// A chunk of a log file (`log -f`).
    Log { text: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Position {
    /// Nothing was running: the run starts now.
    Starting,
    /// A run is active: this becomes the follow-up run.
    Queued,
    /// A follow-up was already queued: merged into it.
    Coalesced,
}

/// One response line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Line {
    pub version: u32,
    #[serde(flatten)]
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Body {
    Event(Event),
    Ok(Reply),
    Error(String),
}

/// The final answer to each verb.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    Status(Box<Status>),
    Triggered {
        ticket: u64,
        position: Position,
        /// With `wait`: the record of the run that served this trigger.
        record: Option<Box<RunRecord>>,
    },
    History {
        runs: Vec<RunRecord>,
    },
    Show {
        record: Box<RunRecord>,
    },
    Log {
        text: String,
    },
    Cancelled {
        run: Option<RunId>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub daemon_version: String,
    pub pid: u32,
    pub active: Option<ActiveRun>,
    pub queued: Option<QueuedRun>,
    /// Unix seconds of the next scheduled run; None without a schedule.
    pub next_run: Option<i64>,
    /// The schedule as configured, e.g. `0 3 * * * (Europe/Berlin)`.
    pub schedule: Option<String>,
    pub machines: Vec<MachineSummary>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActiveRun {
    pub id: RunId,
    pub trigger: Trigger,
    pub requested_by: Option<String>,
    pub started_at: i64,
    pub phase: Option<Phase>,
    pub machines: Vec<MachineRecord>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueuedRun {
    pub trigger: Trigger,
    pub requested_by: Option<String>,
    /// Empty: all machines.
    pub machines: Vec<MachineName>,
    pub update: bool,
}

impl Line {
    pub fn event(event: Event) -> Line {
        Line {
            version: VERSION,
            body: Body::Event(event),
        }
    }
    pub fn ok(reply: Reply) -> Line {
        Line {
            version: VERSION,
            body: Body::Ok(reply),
        }
    }
    pub fn error(message: impl Into<String>) -> Line {
        Line {
            version: VERSION,
            body: Body::Error(message.into()),
        }
    }

    /// The line as sent: JSON plus a newline.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("protocol types serialize");
        v.push(b'\n');
        v
    }
}

/// Parses one request line, with an error message fit to send back.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let mut value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("malformed request: not JSON ({e})"))?;
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == VERSION as u64 => {}
        Some(v) => {
            return Err(format!(
                "protocol version {v} is not supported by this farmd (it speaks {VERSION}); use the farmctl that came with it"
            ))
        }
        None => return Err("malformed request: no `version` field".into()),
    }
    // Deserialize the request on its own (not through `Envelope`'s flatten, which would
    // let unknown fields through) so a misspelt field is an error, not silently ignored.
    if let Some(map) = value.as_object_mut() {
        map.remove("version");
    }
    serde_json::from_value::<Request>(value).map_err(|e| format!("malformed request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_in_the_documented_shape() {
        let req = Envelope {
            version: VERSION,
            request: Request::Trigger {
                machines: vec!["pi3".parse().unwrap()],
                no_update: false,
                wait: true,
            },
        };
        let text = serde_json::to_string(&req).unwrap();
        assert_eq!(
            text,
            r#"{"version":1,"verb":"trigger","machines":["pi3"],"no_update":false,"wait":true}"#
        );
        assert_eq!(parse_request(text.as_bytes()).unwrap(), req.request);
        assert_eq!(
            parse_request(br#"{"version":1,"verb":"status"}"#).unwrap(),
            Request::Status {}
        );
    }

    #[test]
    fn bad_requests_get_messages_not_panics() {
        let err = parse_request(b"{not json").unwrap_err();
        assert!(err.starts_with("malformed request: not JSON"), "{err}");
        let err = parse_request(br#"{"verb":"status"}"#).unwrap_err();
        assert!(err.contains("no `version`"), "{err}");
        let err = parse_request(br#"{"version":9,"verb":"status"}"#).unwrap_err();
        assert!(err.contains("version 9 is not supported"), "{err}");
        let err = parse_request(br#"{"version":1,"verb":"reboot"}"#).unwrap_err();
        assert!(err.contains("unknown variant `reboot`"), "{err}");
        let err =
            parse_request(br#"{"version":1,"verb":"trigger","machines":["../x"]}"#).unwrap_err();
        assert!(err.contains("machine name"), "{err}");
        let err = parse_request(br#"{"version":1,"verb":"status","x":1}"#).unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
    }
}
