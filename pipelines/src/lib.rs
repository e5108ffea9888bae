//! flyt pipelines: curation pipelines written in Rust, the `flyt` command-line tool, and (later) the Flight
//! service. Built from `flyt-operators`, which wrap the `flyt` domain crate.

pub mod cli;
pub mod demo;
pub mod plot;
pub mod shards;
