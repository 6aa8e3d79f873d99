//! farmctl's verbs that turn records into text, and how the binaries report errors. Rendering
//! functions are pure: they take what the daemon or the history returned and give back a
//! `String`; the binaries print them. Parsing arguments, talking to the daemon and choosing exit
//! codes stay in `src/bin/`.

pub mod cache;
pub mod check_config;
pub mod gc;
pub mod history;
pub mod report;
pub mod status;
pub mod style;
