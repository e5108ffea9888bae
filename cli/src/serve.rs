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
        Ok(FlightOptions {
            addr,
            token,
            auth_reads: self.auth_reads,
            tls: self.tls_cert.clone().zip(self.tls_key.clone()),
            max_message_bytes: self.max_message_bytes,
            max_put_rows: self.max_put_rows,
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
