//! `flyt curate`: the streaming curation graph (see `flyt_pipelines::curate`).

use std::path::PathBuf;

use clap::ArgAction;
use flyt::DeviceSpec;
use flyt_pipelines::{Arrival, CurateConfig, EmbeddingSource, Method};

/// Arguments of `flyt curate`. Flags override the `--config` file.
#[derive(clap::Args, Debug)]
#[command(disable_help_flag = true)]
pub struct Args {
    /// A directory of WebDataset shards (watched with --follow), or shard files. A shard with DataComp sidecars
    /// (`<stem>.parquet` + `<stem>.npz`) is scored from them without a model.
    #[arg(long, num_args = 1..)]
    pub shards: Vec<PathBuf>,
    /// Output directory: `subset.npy`, `manifest.json`, `shards/` (per-shard commit records, score tables,
    /// rejects), `embeddings/`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A pipeline TOML file (sections [input], [embed], [score], [sample], [output]; see the README).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Keep watching for new shards and score files, updating `subset.npy` as they land, until SIGINT/SIGTERM.
    #[arg(long)]
    pub follow: bool,
    /// With --follow: exit once nothing new arrived for this many seconds and everything is committed.
    #[arg(long)]
    pub idle_exit: Option<f64>,
    /// How often watched directories are listed, in milliseconds.
    #[arg(long)]
    pub poll_ms: Option<u64>,
    /// Least time between two publications of subset.npy + manifest.json while following, in milliseconds.
    #[arg(long)]
    pub publish_ms: Option<u64>,
    /// Worker threads in this process.
    #[arg(long, short = 'w')]
    pub workers: Option<usize>,
    /// Cluster: the number of processes.
    #[arg(short = 'n', long = "processes", default_value_t = 1)]
    pub processes: usize,
    /// Cluster: this process's index.
    #[arg(short = 'p', long = "process", default_value_t = 0)]
    pub process: usize,
    /// Cluster: a file with one `host:port` per process (default: localhost:2101, 2102, ...).
    #[arg(short = 'h', long = "hostfile")]
    pub hostfile: Option<PathBuf>,
    /// When a shard counts as arrived: `auto` (the default: `marker` in a directory that shows img2dataset's
    /// layout, its `_tmp/` or a `<name>_stats.json` beside a `<name>.tar`, else `rename`), `rename` (as soon as it is visible under its
    /// final name) or `marker` (once its `<stem>_stats.json` or `<stem>.done` exists).
    #[arg(long)]
    pub arrival: Option<Arrival>,
    /// Where embeddings come from: `auto` (sidecars when present, else the model), `sidecar` or `model`.
    #[arg(long)]
    pub embeddings: Option<EmbeddingSource>,
    /// A Hugging Face CLIP folder for shards without sidecars.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    #[arg(long, value_parser = crate::device)]
    pub device: Option<DeviceSpec>,
    /// Embedding batch size.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// The scoring methods (comma-separated): clip_score, neg_clip_loss, norm_sim_2, norm_sim_inf, image_based,
    /// text_based, basic, flyt (default: clip_score, and flyt with --flyt).
    #[arg(long, value_delimiter = ',')]
    pub methods: Option<Vec<Method>>,
    /// A FLYT checkpoint: the `flyt` method.
    #[arg(long)]
    pub flyt: Option<PathBuf>,
    /// NormSim and image-based: the downstream set's image embeddings (`.npy`, `.npz`, `FILE.npz:KEY`;
    /// repeatable).
    #[arg(long)]
    pub downstream: Vec<String>,
    /// Text-based: downstream `classnames.txt` files (repeatable).
    #[arg(long)]
    pub classnames: Vec<PathBuf>,
    /// Image-based: fixed k-means centroids (`flyt clusters`).
    #[arg(long)]
    pub centroids: Option<PathBuf>,
    /// An M-FLYT checkpoint: the score SCS samples by is its mix.
    #[arg(long)]
    pub mixer: Option<PathBuf>,
    /// A directory of external per-uid score parquet files (watched), joined on uid for the mix.
    #[arg(long)]
    pub scores: Option<PathBuf>,
    /// Take exact content duplicates out of the pool before sampling (same image bytes or same decoded
    /// pixels: the least uid stays; the others are listed in OUT/duplicates.parquet). Same as [dedup] exact.
    #[arg(long)]
    pub dedup_exact: bool,
    /// Take semantic near-duplicates out of the pool (SemDeDup within the clusters of these fixed centroids,
    /// a `flyt clusters` .npy): a sample goes when its cosine to a member of its cluster farther from the
    /// centroid is ≥ 1 − --dedup-epsilon; listed in OUT/duplicates.parquet. Same as [dedup.semantic].
    #[arg(long, value_name = "CENTROIDS")]
    pub dedup_semantic: Option<PathBuf>,
    /// SemDeDup's ε (default 0.05).
    #[arg(long, requires = "dedup_semantic")]
    pub dedup_epsilon: Option<f32>,
    /// SCS repetition penalty α.
    #[arg(long)]
    pub alpha: Option<f64>,
    /// SCS target T (Σ counts).
    #[arg(long, conflicts_with = "target_ratio")]
    pub target: Option<u64>,
    /// T as a fraction of the pool.
    #[arg(long)]
    pub target_ratio: Option<f64>,
    /// Seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Without --follow: also write the selected samples, repeated by count, as WebDataset shards here.
    #[arg(long)]
    pub reshard: Option<PathBuf>,
    /// Also serve the output over Arrow Flight at this address while curating (see `flyt serve`).
    #[arg(long)]
    pub serve: Option<std::net::SocketAddr>,
    /// Flight service options (with --serve).
    #[command(flatten)]
    pub flight: crate::serve::FlightArgs,
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    pub help: Option<bool>,
}

impl Args {
    /// The configuration: the file's, then the flags.
    pub fn config(&self) -> anyhow::Result<CurateConfig> {
        let mut c = match &self.config {
            Some(p) => CurateConfig::from_file(p)?,
            None => CurateConfig::default(),
        };
        if !self.shards.is_empty() {
            c.input.shards = self.shards.clone();
        }
        if let Some(o) = &self.out {
            c.output.dir = o.clone();
        }
        c.follow |= self.follow;
        if self.idle_exit.is_some() {
            c.idle_exit_s = self.idle_exit;
        }
        macro_rules! set {
            ($field:expr, $v:expr) => {
                if let Some(v) = $v.clone() {
                    $field = v;
                }
            };
        }
        set!(c.input.arrival, self.arrival);
        set!(c.input.poll_ms, self.poll_ms);
        set!(c.output.publish_ms, self.publish_ms);
        set!(c.input.embeddings, self.embeddings);
        set!(c.embed.device, self.device);
        set!(c.embed.batch_size, self.batch_size);
        set!(c.sample.alpha, self.alpha);
        set!(c.sample.seed, self.seed);
        if self.dedup_exact {
            c.dedup.exact = true;
        }
        if let Some(centroids) = &self.dedup_semantic {
            let epsilon = self.dedup_epsilon.or(c.dedup.semantic.as_ref().map(|s| s.epsilon)).unwrap_or(0.05);
            c.dedup.semantic = Some(flyt_pipelines::SemanticDedup { centroids: centroids.clone(), epsilon });
        }
        if self.model.is_some() {
            c.embed.model = self.model.clone();
        }
        if self.methods.is_some() {
            c.score.methods = self.methods.clone();
        }
        if self.flyt.is_some() {
            c.score.flyt = self.flyt.clone();
        }
        if !self.downstream.is_empty() {
            c.score.downstream = self.downstream.clone();
        }
        if !self.classnames.is_empty() {
            c.score.classnames = self.classnames.clone();
        }
        if self.centroids.is_some() {
            c.score.centroids = self.centroids.clone();
        }
        if self.mixer.is_some() {
            c.score.mixer = self.mixer.clone();
        }
        if self.scores.is_some() {
            c.input.scores = self.scores.clone();
        }
        if self.target.is_some() {
            c.sample.target = self.target;
            c.sample.target_ratio = None;
        }
        if self.target_ratio.is_some() {
            c.sample.target_ratio = self.target_ratio;
            c.sample.target = None;
        }
        if self.reshard.is_some() {
            c.output.reshard = self.reshard.clone();
        }
        Ok(c)
    }

    /// The timely configuration: threads, and processes with their addresses.
    pub fn timely(&self) -> anyhow::Result<timely::Config> {
        let threads = self.workers.unwrap_or(1).max(1);
        if self.processes <= 1 {
            return Ok(if threads > 1 { timely::Config::process(threads) } else { timely::Config::thread() });
        }
        if self.process >= self.processes {
            anyhow::bail!("-p {} is not below -n {}", self.process, self.processes);
        }
        let addresses: Vec<String> = match &self.hostfile {
            Some(f) => {
                let text = std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
                let a: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
                if a.len() < self.processes {
                    anyhow::bail!("{}: {} addresses for -n {}", f.display(), a.len(), self.processes);
                }
                a.into_iter().take(self.processes).collect()
            }
            None => (0..self.processes).map(|i| format!("localhost:{}", 2101 + i)).collect(),
        };
        Ok(timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads,
                process: self.process,
                addresses,
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        })
    }
}

/// Runs `flyt curate`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let config = a.config()?;
    let timely = a.timely()?;
    flyt_pipelines::install_stop_signals();
    let out = config.output.dir.clone();
    let reshard = config.output.reshard.clone();
    let shard_size = config.output.shard_size;
    let inputs = config.input.shards.clone();
    let following = config.follow;
    if a.process == 0 {
        // When a shard counts as arrived, per watched directory (the log says it again if it changes).
        for d in inputs.iter().filter(|d| d.is_dir()) {
            let marked = flyt_pipelines::dir_shows_marker_layout(d);
            eprintln!("flyt: {}: {}", d.display(), flyt_pipelines::arrival_rule(config.input.arrival, marked));
        }
    }
    let server = match a.serve {
        Some(addr) if a.process == 0 => {
            std::fs::create_dir_all(&out)?;
            Some(flyt_pipelines::spawn_flight(out.clone(), a.flight.options(addr)?)?)
        }
        _ => None,
    };
    let summary = flyt_pipelines::curate(config, timely);
    if let Some((stop, handle)) = server {
        let _ = stop.send(());
        if let Ok(Err(e)) = handle.join() {
            eprintln!("flyt: the Flight service stopped: {}", e.report());
        }
    }
    let summary = summary?;
    if a.process != 0 {
        return Ok(());
    }
    let m = &summary.manifest;
    println!("{}", summary.line);
    println!(
        "subset: {} ({} uids, {} samples, max count {}) from a pool of {} uids ({} rows); {} shards committed, {} failed",
        out.join("subset.npy").display(),
        m["subset"]["uids"],
        m["subset"]["samples"],
        m["subset"]["max_count"],
        m["pool"]["uids"],
        m["pool"]["rows"],
        m["shards"].as_array().map(|a| a.len()).unwrap_or(0),
        m["failed"].as_array().map(|a| a.len()).unwrap_or(0),
    );
    for f in m["failed"].as_array().into_iter().flatten() {
        println!("  failed: {}: {}", f["name"].as_str().unwrap_or(""), f["error"].as_str().unwrap_or(""));
    }
    println!("manifest: {}", out.join("manifest.json").display());
    let failed = m["failed"].as_array().map(|a| a.len()).unwrap_or(0);
    // Shards found that never arrived: said with their count; a batch run that curated nothing is an error.
    let mut waiting_total = 0usize;
    let mut waiting_words = Vec::new();
    for (why, names) in m["waiting"].as_object().into_iter().flatten() {
        let names: Vec<&str> = names.as_array().into_iter().flatten().filter_map(|n| n.as_str()).collect();
        let what = flyt_pipelines::Waiting::from_key(why).map(|w| w.what()).unwrap_or(why.as_str());
        let shown = names.iter().take(5).copied().collect::<Vec<_>>().join(", ");
        let more = if names.len() > 5 { format!(" and {} more", names.len() - 5) } else { String::new() };
        eprintln!("flyt: {} shard(s) wait for {what}: {shown}{more}", names.len());
        waiting_total += names.len();
        waiting_words.push(format!("{} wait for {}", names.len(), why));
    }
    let interrupted = m["interrupted"].as_array().map(|a| a.len()).unwrap_or(0);
    let in_pool = m["shards"].as_array().map(|a| a.len()).unwrap_or(0);
    // (Before --reshard, which would replace an earlier output with an empty one.)
    if !following && in_pool == 0 && failed == 0 && interrupted == 0 {
        let inputs = inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        if waiting_total > 0 {
            anyhow::bail!("nothing was curated: of the shards in {inputs}, {}", waiting_words.join(", "));
        }
        anyhow::bail!("nothing was curated: no shards (.tar, .tar.gz, .tgz, or .parquet + .npz sidecars) in {inputs}");
    }
    if let Some(dir) = reshard {
        let subset = flyt::SubsetCounts::read(out.join("subset.npy"))?;
        let tars: Vec<PathBuf> = flyt_pipelines::expand_shards(&inputs)?;
        let report = flyt::reshard(&subset, &tars, &dir, shard_size as u64, true, |_, _| {})?;
        crate::reshard::found_any(&report, &out.join("subset.npy"), &inputs)
            .map_err(|e| e.context(format!("--reshard {}", dir.display())))?;
        println!(
            "resharded: {} samples in {} shards under {} ({} selected uids not found in the tars)",
            report.written_samples,
            report.output_shards,
            dir.display(),
            report.not_found.len()
        );
    }
    if failed > 0 {
        anyhow::bail!(
            "{failed} shard(s) failed (listed in {}); the subset covers the rest",
            out.join("manifest.json").display()
        );
    }
    if interrupted > 0 {
        println!(
            "interrupted: {interrupted} shard(s) were not read (a stop was requested); a run started again reads them"
        );
        // A following run is stopped this way as a matter of course; a batch run did not finish its work.
        if !following {
            anyhow::bail!("stopped before every shard was read: {interrupted} shard(s) interrupted");
        }
    }
    Ok(())
}
