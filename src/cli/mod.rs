//! (being written)

pub mod check_config;
