//! The `flyt` command line: clap arguments mapped to the jobs' configurations of `flyt-pipelines` and
//! `flyt-eval`, and their reports printed. No logic of its own.

use clap::{Parser, Subcommand};

mod curate;
mod demo;
mod doctor;
mod downstream;
mod embed;
mod embed_bench;
mod eval;
mod filter;
mod inspect;
mod reshard;
mod sample;
mod serve;
mod synth;
mod train;

/// flyt — Filter Like You Test: curate image-text pretraining data (WebDataset / DataComp).
#[derive(Parser, Debug)]
#[command(name = "flyt", version, about, long_about = None)]
struct Cli {
    /// The command.
    #[command(subcommand)]
    command: Command,
}

/// The commands.
#[derive(Subcommand, Debug)]
enum Command {
    /// Embed shards' images and captions with a CLIP model: per shard, `.npz` embeddings and a `.parquet` of
    /// (uid, key, text, original size, CLIP score), a DataComp-style pool. Resumable.
    Embed(embed::Args),
    /// Embed a labelled WebDataset (`cls`) and its class names × templates with a frozen CLIP into a FLYT
    /// downstream task `.npz` (image, labels, prompts) for `flyt train`.
    Downstream(downstream::Args),
    /// Time the image tower of a randomly initialised CLIP (ViT-B/32 or ViT-L/14) on a device.
    EmbedBench(embed_bench::Args),
    /// Select a subset with one of DataComp's baseline filters or a score method (CLIP score, negCLIPLoss,
    /// NormSim); writes a DataComp subset file.
    Filter(filter::Args),
    /// Compute every per-uid score column a pool's inputs allow (CLIP score, negCLIPLoss, NormSim, basic-filter
    /// features, image- and text-based) into one parquet, for M-FLYT: the curation graph's methods over the pool.
    Scores(filter::ScoresArgs),
    /// Fit the k-means centroids of the image-based method once, over a pool's image embeddings, into a `.npy`
    /// that `flyt curate`, `scores` and `filter` assign against.
    Clusters(filter::ClustersArgs),
    /// Read shards and print per-shard stats and rejects.
    Inspect(inspect::Args),
    /// Write the samples a DataComp subset file selects, each repeated as often as listed, into new shards.
    Reshard(reshard::Args),
    /// Sample the training subset from scores: SCS (exact or in rounds), HCS or top-k; writes a DataComp subset.
    Sample(sample::Args),
    /// Train a FLYT scoring head (`flyt`) or an M-FLYT score mixer (`mflyt`) with the one-step-lookahead
    /// hypergradient from downstream tasks (reference: projections over precomputed embeddings, or the CLIP
    /// towers over shards).
    #[command(subcommand)]
    Train(train::Which),
    /// Score a pool or shards with a trained FLYT / M-FLYT checkpoint: `<stem>_scores.parquet` (uid, key, score)
    /// per pool file or shard.
    Score(train::ScoreArgs),
    /// Write a synthetic pool of shards in img2dataset's layout (for trying flyt out and for benchmarks).
    Synth(synth::Args),
    /// Curate continuously: a timely dataflow that ingests shards as they arrive (a watched directory),
    /// embeds them, scores them with every configured method (CLIP score, negCLIPLoss, NormSim, image- and
    /// text-based, the basic filter, a FLYT head), mixes them with M-FLYT (joining external scores), and keeps
    /// `OUT/subset.npy` (Soft Cap Sampling) and `OUT/manifest.json` up to date. Exactly-once, resumable.
    Curate(Box<curate::Args>),
    /// Serve a curation output directory over Arrow Flight: scores, the live subset and its changes, stats,
    /// rejects, embeddings (with the bearer token); accept external scores and new shard paths from
    /// --allow-shards-from directories (with the bearer token).
    Serve(serve::Args),
    /// Evaluate the curation methods on a mini-DataComp built from real data (Fashion-MNIST and handwritten
    /// digits, Openclipart, web alt-text) with a reference CLIP trained on a web-like slice: curate with each
    /// method (no filter, random, CLIP score / FLYT / M-FLYT top-k and + SCS, FLYT with the full reference, the
    /// clean-only ceiling), train a fresh small CLIP per subset and seed (5 by default), measure zero-shot top-1
    /// per judge task and their mean, with paired differences against CLIP score top-k; writes results.json and
    /// report.html.
    Eval(eval::Args),
    /// Write the HTML report of an evaluation directory (`flyt eval`'s output).
    Report(eval::ReportArgs),
    /// Run the embedded demo: a short `flyt eval` (one seed, six of the eleven rows) ending with the report and the
    /// accuracy table.
    Demo(demo::Args),
    /// Report what libtorch sees (CUDA, devices) and run a small tensor check on the best device.
    Doctor(doctor::Args),
}

/// Runs the command line; exits 0 (done), 1 (an error, printed on one line) or 2 (bad arguments).
fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLYT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: logs captured to a file or a pipe stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let result = match cli.command {
        Command::Embed(a) => embed::run(a),
        Command::EmbedBench(a) => embed_bench::run(a),
        Command::Downstream(a) => downstream::run(a),
        Command::Filter(a) => filter::run(a),
        Command::Scores(a) => filter::run_scores(a),
        Command::Clusters(a) => filter::run_clusters(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Reshard(a) => reshard::run(a),
        Command::Sample(a) => sample::run(a),
        Command::Synth(a) => synth::run(a),
        Command::Train(w) => train::run(w),
        Command::Score(a) => train::run_score(a),
        Command::Curate(a) => curate::run(*a),
        Command::Serve(a) => serve::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Report(a) => eval::run_report(a),
        Command::Demo(a) => demo::run(a),
        Command::Doctor(a) => doctor::run(a),
    };
    if let Err(e) = result {
        eprintln!("flyt: error: {}", chain(&e));
        std::process::exit(1);
    }
}

/// An error and its causes on one line, each cause once.
fn chain(e: &anyhow::Error) -> String {
    flyt_pipelines::report(e.as_ref())
}

/// `--device` values: auto, cpu, cuda or cuda:N.
fn device(s: &str) -> Result<flyt::DeviceSpec, String> {
    s.parse().map_err(|e: flyt::Error| e.to_string())
}
