//! The `spinectl` command: command line, running commands, and rendering results.

pub mod app;
pub mod args;
pub mod load;
pub mod render;
pub mod run;
pub mod security;
