//! flyt pipelines: curation pipelines written in Rust ([`curate`]: the streaming curation dataflow), the
//! `flyt` command-line tool, and (later) the Flight service. Built from `flyt-operators`, which wrap the `flyt`
//! domain crate.

pub mod cli;
pub mod curate;
pub mod demo;
pub mod eval;
pub mod flight;
pub mod plot;
pub mod shards;
