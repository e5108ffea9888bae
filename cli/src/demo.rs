//! `flyt demo`: the embedded default run, a short `flyt eval` (one seed, six of the eleven rows; the repository's
//! `eval-demo.toml`, compiled in). It builds the mini-DataComp from the real data `./x setup` installs, curates
//! it with every method, trains a small CLIP per subset, and ends by writing the report and printing its path and
//! the accuracy table.

use std::path::PathBuf;

use flyt::DeviceSpec;
use flyt_eval::{DEMO_EVAL, EvalConfig, RunOptions};

/// Arguments of `flyt demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Working directory (stages whose inputs did not change are reused from an earlier run).
    #[arg(long, default_value = "flyt-demo")]
    pub out: PathBuf,
    /// Timely workers of the curation runs.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Device for every model: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_parser = crate::device)]
    pub device: DeviceSpec,
    /// Print the embedded configuration and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// Runs the demo.
pub fn run(a: Args) -> anyhow::Result<()> {
    if a.print_config {
        print!("{DEMO_EVAL}");
        return Ok(());
    }
    let cfg = EvalConfig::parse(DEMO_EVAL, "the embedded eval-demo.toml")?;
    let opts = RunOptions { out: a.out.clone(), workers: a.workers, verbose: true, device: a.device };
    crate::eval::run_config(cfg, a.out, opts, true)
}
