//! Rust client for the Spine, and the `spinectl` command.

pub mod convert;
