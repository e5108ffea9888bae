//! `flyt serve`: the Arrow Flight service over a curation output directory (see `flyt_pipelines::flight`).

use std::net::SocketAddr;
use std::path::PathBuf;

use flyt_pipelines::FlightOptions;

/// Flight service options shared by `flyt serve` and `flyt curate --serve`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct FlightArgs {
    /// The bearer token writes need (`authorization: Bearer <token>`); without one the service takes no writes.
    #[arg(long, conflicts_with = "token_file")]
    pub token: Option<String>,
    /// A file holding the token (its first line).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Reads need the token too.
    #[arg(long)]
    pub auth_reads: bool,
    /// Serve `embeddings/<shard>` flights without the token (by default they need it, as writes do).
    #[arg(long)]
    pub public_embeddings: bool,
    /// A directory whose files (symlinks resolved) a `shards` put may link for ingestion; repeatable.
    /// None: `shards` puts are refused.
    #[arg(long, value_name = "DIR")]
    pub allow_shards_from: Vec<PathBuf>,
    /// TLS certificate (PEM); with --tls-key the service speaks TLS only.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Largest gRPC message in bytes, each way.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_message_bytes: usize,
    /// Largest DoPut in rows.
    #[arg(long, default_value_t = 10_000_000)]
    pub max_put_rows: usize,
    /// Largest DoPut in bytes of decoded record batches, counted as they arrive (default 256 MiB).
    #[arg(long, default_value_t = 256 << 20)]
    pub max_put_bytes: usize,
    /// The bytes of record batches all puts in flight may hold together (default 1 GiB).
    #[arg(long, default_value_t = 1 << 30)]
    pub max_put_bytes_total: usize,
    /// The most bytes the score directory's files may hold after a `scores/<name>` put (default 10 GiB).
    #[arg(long, default_value_t = 10 << 30)]
    pub max_score_bytes: u64,
}

impl FlightArgs {
    /// The service options for `addr`.
    pub fn options(&self, addr: SocketAddr) -> anyhow::Result<FlightOptions> {
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(f)) => {
                let text = std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
                Some(text.lines().next().unwrap_or_default().trim().to_string())
            }
            (None, None) => None,
        };
        if token.as_deref().is_some_and(|t| t.len() < 16) {
            anyhow::bail!("the token is shorter than 16 characters");
        }
        if self.auth_reads && token.is_none() {
            anyhow::bail!("--auth-reads needs --token or --token-file");
        }
        let allow_shards_from = self
            .allow_shards_from
            .iter()
            .map(|d| match std::fs::canonicalize(d) {
                Ok(c) if c.is_dir() => Ok(c),
                Ok(_) => anyhow::bail!("--allow-shards-from {}: not a directory", d.display()),
                Err(e) => anyhow::bail!("--allow-shards-from {}: {e}", d.display()),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(FlightOptions {
            addr,
            token,
            auth_reads: self.auth_reads,
            tls: self.tls_cert.clone().zip(self.tls_key.clone()),
            max_message_bytes: self.max_message_bytes,
            max_put_rows: self.max_put_rows,
            max_put_bytes: self.max_put_bytes,
            max_put_bytes_total: self.max_put_bytes_total,
            max_score_bytes: self.max_score_bytes,
            allow_shards_from,
            public_embeddings: self.public_embeddings,
            ..Default::default()
        })
    }
}

/// Arguments of `flyt serve`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The curation output directory (`flyt curate --out DIR`).
    #[arg(long)]
    pub out: PathBuf,
    /// Where to listen (a non-local address exposes the service to the network).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub addr: SocketAddr,
    /// Service options.
    #[command(flatten)]
    pub flight: FlightArgs,
}

/// Runs `flyt serve` until SIGINT/SIGTERM.
pub fn run(a: Args) -> anyhow::Result<()> {
    if !a.out.is_dir() {
        anyhow::bail!(
            "--out {}: no such directory (flyt serve reads the output directory of flyt curate --out)",
            a.out.display()
        );
    }
    let opts = a.flight.options(a.addr)?;
    flyt_pipelines::install_stop_signals();
    eprintln!(
        "flyt serve: Arrow Flight on {}{} over {}",
        a.addr,
        if opts.tls.is_some() { " (TLS)" } else { "" },
        a.out.display()
    );
    Ok(flyt_pipelines::serve_until_stopped(a.out, opts)?)
}
