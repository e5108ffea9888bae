//! `flyt eval` and `flyt report`.

use std::path::PathBuf;

use flyt::DeviceSpec;
use flyt_eval::{DEFAULT_EVAL, EvalConfig, RunOptions, write_report};

/// Arguments of `flyt eval`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The evaluation's configuration (TOML; the repository's `eval.toml` documents every key). Default: the
    /// embedded copy of `eval.toml`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Output directory (default: the configuration's `out`). Stages whose inputs did not change are reused.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seeds to train each method with (comma-separated), overriding `[train] seeds`.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Option<Vec<u64>>,
    /// Timely workers of the curation runs.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Device for every model (embedding, FLYT / M-FLYT training, the trained CLIPs): auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_parser = crate::device)]
    pub device: DeviceSpec,
    /// Do not write `report.html` at the end.
    #[arg(long)]
    pub no_report: bool,
    /// Only progress errors (no stage log).
    #[arg(long, short)]
    pub quiet: bool,
}

/// Arguments of `flyt report`.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// An evaluation's output directory (with `results.json`).
    #[arg(long = "eval")]
    pub dir: PathBuf,
    /// The HTML file to write (default: DIR/report.html).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs an evaluation and, unless asked not to, writes its report; prints the accuracy table.
pub fn run(a: Args) -> anyhow::Result<()> {
    let mut cfg = match &a.config {
        Some(p) => EvalConfig::from_file(p)?,
        None => EvalConfig::parse(DEFAULT_EVAL, "the embedded eval.toml")?,
    };
    if let Some(s) = a.seeds {
        cfg.train.seeds = s;
    }
    let out = a.out.clone().unwrap_or_else(|| cfg.out.clone());
    run_config(
        cfg,
        out,
        RunOptions { out: PathBuf::new(), workers: a.workers, verbose: !a.quiet, device: a.device },
        !a.no_report,
    )
}

/// Runs `cfg` into `out` (which replaces `opts.out`), writes the report (when `with_report`) and prints the
/// table and the report's path.
pub fn run_config(cfg: EvalConfig, out: PathBuf, opts: RunOptions, with_report: bool) -> anyhow::Result<()> {
    let t = std::time::Instant::now();
    let results = flyt_eval::run(cfg, &RunOptions { out: out.clone(), ..opts })?;
    println!("{}", results.table());
    println!("results: {}", out.join("results.json").display());
    if with_report {
        let path = write_report(&out, &out.join("report.html"))?;
        println!("report: {}", path.display());
    }
    println!("total {:.0} s", t.elapsed().as_secs_f64());
    Ok(())
}

/// Writes the report of an evaluation directory.
pub fn run_report(a: ReportArgs) -> anyhow::Result<()> {
    let path = a.out.unwrap_or_else(|| a.dir.join("report.html"));
    let p = write_report(&a.dir, &path)?;
    println!("report: {}", p.display());
    Ok(())
}
