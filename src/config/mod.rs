//! The config file: one TOML file, parsed with serde (`deny_unknown_fields`) into raw structs,
//! then validated in one step into [`Settings`] of domain types.

mod settings;

pub use settings::*;
