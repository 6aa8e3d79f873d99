//! farmctl's verbs that turn records into text. Every function here is pure: it takes what the
//! daemon or the history returned and gives back a `String`; the binary prints it. Parsing
//! arguments, talking to the daemon and choosing exit codes stay in `src/bin/farmctl.rs`.

pub mod check_config;
pub mod history;
pub mod style;
