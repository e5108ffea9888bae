//! `flyt serve`: an Arrow Flight service over a curation output directory (`flyt curate --out DIR`), running
//! beside the dataflow (`flyt curate --serve ADDR`) or on its own.
//!
//! Flights (`ListFlights`; `GetFlightInfo` with a path descriptor; `DoGet` with the tickets it returns):
//! - `scores`: per-shard score tables (`uid`, `key`, `shard`, the method columns, `score` = what SCS samples
//!   by), one endpoint per shard so clients read in parallel;
//! - `subset`: the current subset (`uid`, `count`), its version in the schema metadata and the FlightInfo's
//!   app metadata, split into endpoints of at most `part_rows` rows;
//! - `stats` (per-shard ingest counts), `rejects` (one endpoint per shard), `embeddings/<shard>`;
//! - `changes[/<since>]`: subset changes (`version`, `uid`, `delta`) after a version; `DoExchange` with the
//!   descriptor `changes/<since>` streams them as they happen.
//!
//! `DoPut` with descriptor `scores/<name>` stores external method scores (`uid` + float columns) as an
//! immutable score file the curation joins for M-FLYT; `shards` (a `path` column) links new shard files from
//! the `allow_shards_from` directories into the watched shard directory. Writes need the bearer token
//! (`authorization: Bearer <token>`); so do `embeddings/...` reads unless `public_embeddings`, and all reads
//! with `auth_reads`. A put's record batches are bounded in rows and bytes as they arrive, and the puts in
//! flight together in bytes; the score directory in bytes. Bad input gets `InvalidArgument` (or
//! `AlreadyExists`, `FailedPrecondition`, `PermissionDenied`, `ResourceExhausted`, `Unauthenticated`) and
//! changes nothing.

mod put;
mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest,
    HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use arrow_schema::SchemaRef;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use tonic::{Request, Response, Status, Streaming};

use state::State;

/// How the service runs.
#[derive(Clone, Debug)]
pub struct FlightOptions {
    /// Where to listen (default 127.0.0.1:50051: this machine only).
    pub addr: SocketAddr,
    /// The bearer token writes need (no token: writes are refused).
    pub token: Option<String>,
    /// Reads need the token too.
    pub auth_reads: bool,
    /// TLS certificate and key (PEM).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Largest gRPC message, in bytes (both directions).
    pub max_message_bytes: usize,
    /// Largest DoPut, in rows.
    pub max_put_rows: usize,
    /// Largest DoPut, in bytes of decoded record batches (counted as they arrive).
    pub max_put_bytes: usize,
    /// The bytes of decoded record batches all puts in flight may hold together.
    pub max_put_bytes_total: usize,
    /// The most bytes the files in the score directory may hold after a `scores/<name>` put.
    pub max_score_bytes: u64,
    /// The directories a `shards` put may link files from (symlinks resolved); none: `shards` puts are refused.
    pub allow_shards_from: Vec<PathBuf>,
    /// `embeddings/...` flights can be read without the token (unless `auth_reads`).
    pub public_embeddings: bool,
    /// Rows per subset endpoint.
    pub part_rows: usize,
}

impl Default for FlightOptions {
    fn default() -> Self {
        FlightOptions {
            addr: "127.0.0.1:50051".parse().expect("a valid address"),
            token: None,
            auth_reads: false,
            tls: None,
            max_message_bytes: 64 << 20,
            max_put_rows: 10_000_000,
            max_put_bytes: 256 << 20,
            max_put_bytes_total: 1 << 30,
            max_score_bytes: 10 << 30,
            allow_shards_from: Vec::new(),
            public_embeddings: false,
            part_rows: 1_000_000,
        }
    }
}

/// The Flight service.
#[derive(Clone)]
pub struct CurationFlight {
    state: Arc<Mutex<State>>,
    opts: Arc<FlightOptions>,
    versions: tokio::sync::watch::Receiver<u64>,
    /// Bytes of record batches the puts in flight hold.
    put_bytes: Arc<AtomicUsize>,
}

/// What a request needs to be allowed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Access {
    /// A read of a flight other than `embeddings/...`.
    Read,
    /// A read of `embeddings/...`.
    Embeddings,
    /// A write.
    Write,
}

/// Bytes of the puts in flight reserved against the shared budget; given back when dropped, however the
/// put ends (refused, failed, cancelled or stored).
struct Reservation {
    used: Arc<AtomicUsize>,
    held: usize,
}

impl Reservation {
    /// Reserves `n` more bytes if the total stays within `limit`.
    fn grow(&mut self, n: usize, limit: usize) -> bool {
        let ok = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| u.checked_add(n).filter(|t| *t <= limit))
            .is_ok();
        if ok {
            self.held += n;
        }
        ok
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.used.fetch_sub(self.held, Ordering::SeqCst);
    }
}

/// The memory a decoded record batch holds: each distinct allocation its arrays' buffers point into, once
/// (batches decoded from a message share its body; `get_array_memory_size` would count it per buffer).
fn batch_bytes(b: &RecordBatch) -> usize {
    fn walk(d: &arrow_data::ArrayData, seen: &mut std::collections::HashMap<usize, usize>) {
        let buffers = d.buffers().iter().chain(d.nulls().map(|n| n.buffer()));
        for buf in buffers {
            let size = buf.capacity().max(buf.len());
            let e = seen.entry(buf.data_ptr().as_ptr() as usize).or_insert(0);
            *e = (*e).max(size);
        }
        for c in d.child_data() {
            walk(c, seen);
        }
    }
    let mut seen = std::collections::HashMap::new();
    for c in b.columns() {
        walk(&c.to_data(), &mut seen);
    }
    seen.values().sum()
}

/// What the client sees of an error reading its request stream: a message over the gRPC limit (which tonic
/// reports as `OutOfRange`) is `ResourceExhausted` naming the flag.
fn inbound(e: Status, opts: &FlightOptions) -> Status {
    if e.code() == tonic::Code::OutOfRange && e.message().contains("message length too large") {
        Status::resource_exhausted(format!(
            "a message is larger than --max-message-bytes ({} bytes): send smaller record batches ({})",
            opts.max_message_bytes,
            e.message()
        ))
    } else {
        e
    }
}

type Stream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

fn encode(schema: SchemaRef, batches: BoxStream<'static, Result<RecordBatch, FlightError>>) -> Stream<FlightData> {
    FlightDataEncoderBuilder::new().with_schema(schema).build(batches).map_err(Status::from).boxed()
}

impl CurationFlight {
    /// Whether `access` needs the token.
    fn needs_token(&self, access: Access) -> bool {
        match access {
            Access::Read => self.opts.auth_reads,
            Access::Embeddings => self.opts.auth_reads || !self.opts.public_embeddings,
            Access::Write => true,
        }
    }

    /// Whether the request carries the service's token.
    fn has_token<T>(&self, req: &Request<T>) -> bool {
        let Some(token) = &self.opts.token else { return false };
        let given =
            req.metadata().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        given.is_some_and(|g| {
            g.len() == token.len() && g.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
        })
    }

    fn authorize<T>(&self, req: &Request<T>, access: Access) -> Result<(), Status> {
        if !self.needs_token(access) || self.has_token(req) {
            return Ok(());
        }
        let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_else(|| "?".into());
        tracing::warn!(%peer, ?access, "refused an unauthenticated request");
        Err(match (access, self.opts.token.is_some()) {
            (Access::Write, false) => {
                Status::unauthenticated("this service takes no writes (it was started without a token)")
            }
            (Access::Embeddings, false) if !self.opts.auth_reads => Status::unauthenticated(
                "embeddings flights need the bearer token and this service has none (start it with --token, or \
                 with --public-embeddings)",
            ),
            (Access::Embeddings, true) if !self.opts.auth_reads => Status::unauthenticated(
                "missing or wrong bearer token (embeddings flights need it unless the service runs with \
                 --public-embeddings)",
            ),
            _ => Status::unauthenticated("missing or wrong bearer token"),
        })
    }

    /// The access a read of the flight at `path` (or ticket `path` split at `/`) needs.
    fn read_access<S: AsRef<str>>(path: &[S]) -> Access {
        if path.first().is_some_and(|p| p.as_ref() == "embeddings") { Access::Embeddings } else { Access::Read }
    }

    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, Status> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, Status>> {
        let state = self.state.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut s = state.lock().map_err(|_| Status::internal("state lock poisoned"))?;
                f(&mut s)
            })
            .await
            .map_err(internal)?
        }
    }

    fn info(state: &mut State, path: &[String], opts: &FlightOptions) -> Result<FlightInfo, Status> {
        let descriptor = FlightDescriptor::new_path(path.to_vec());
        let ticket = |t: String| FlightEndpoint::new().with_ticket(Ticket::new(t.into_bytes()));
        let p: Vec<&str> = path.iter().map(|s| s.as_str()).collect();
        let shards = state.shards();
        let (schema, endpoints, total, meta): (SchemaRef, Vec<FlightEndpoint>, i64, String) = match p.as_slice() {
            ["scores"] => {
                let cols = shards
                    .first()
                    .and_then(|n| state.record(n))
                    .map(|r| r.columns)
                    .unwrap_or_else(|| vec!["clip_score".into()]);
                let rows = state
                    .current()
                    .and_then(|v| v.manifest["shards"].as_array().cloned())
                    .unwrap_or_default()
                    .iter()
                    .map(|s| s["rows"].as_i64().unwrap_or(0))
                    .sum();
                (
                    state::scores_schema(&cols),
                    shards.iter().map(|s| ticket(format!("scores/{s}"))).collect(),
                    rows,
                    String::new(),
                )
            }
            ["subset"] => {
                let Some(v) = state.current() else { return Err(Status::unavailable("no subset published yet")) };
                let n = v.counts.len();
                let parts = n.div_ceil(opts.part_rows.max(1)).max(1);
                let meta = serde_json::json!({"version": v.version, "complete": v.manifest["complete"], "frontier": v.manifest["frontier"]});
                (
                    state::subset_schema(v),
                    (0..parts).map(|i| ticket(format!("subset/{}/{i}", v.version))).collect(),
                    n as i64,
                    meta.to_string(),
                )
            }
            ["stats"] => (state::stats_schema(), vec![ticket("stats".into())], shards.len() as i64, String::new()),
            ["rejects"] => (
                state::rejects_schema(),
                shards.iter().map(|s| ticket(format!("rejects/{s}"))).collect(),
                -1,
                String::new(),
            ),
            ["embeddings", shard] => {
                let r =
                    state.record(shard).ok_or_else(|| Status::not_found(format!("no committed shard {shard:?}")))?;
                if r.embeddings.is_none() && r.via != "sidecar" {
                    return Err(Status::not_found(format!("shard {shard:?} has no stored embeddings")));
                }
                let schema = if r.dim > 0 {
                    state::embeddings_schema(r.dim)
                } else {
                    state::embeddings_batch(state, shard).map_err(|e| Status::not_found(format!("{e:#}")))?.schema()
                };
                (schema, vec![ticket(format!("embeddings/{shard}"))], r.rows as i64, String::new())
            }
            ["changes"] | ["changes", _] => {
                let since = p
                    .get(1)
                    .map(|s| s.parse::<u64>())
                    .transpose()
                    .map_err(|_| Status::invalid_argument("changes/<since>: since is a version number"))?
                    .unwrap_or(0);
                (state::changes_schema(), vec![ticket(format!("changes/{since}"))], -1, String::new())
            }
            _ => return Err(Status::not_found(format!("no flight {path:?}; ListFlights names them"))),
        };
        let mut info = FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(internal)?
            .with_descriptor(descriptor)
            .with_total_records(total);
        info = info.with_endpoints(endpoints);
        if !meta.is_empty() {
            info = info.with_app_metadata(meta.into_bytes());
        }
        Ok(info)
    }

    fn ticket_batches(
        state: &mut State,
        ticket: &str,
        opts: &FlightOptions,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), Status> {
        let parts: Vec<&str> = ticket.split('/').collect();
        let nf = |e: crate::Error| Status::not_found(e.report());
        Ok(match parts.as_slice() {
            ["subset", version, part] => {
                let (v, i): (u64, usize) = (
                    version.parse().map_err(|_| Status::invalid_argument("bad subset ticket"))?,
                    part.parse().map_err(|_| Status::invalid_argument("bad subset ticket"))?,
                );
                let ver = state.versions.iter().find(|x| x.version == v).ok_or_else(|| {
                    Status::failed_precondition(format!(
                        "subset version {v} is no longer kept; get the flight info again"
                    ))
                })?;
                let size = opts.part_rows.max(1);
                let b = state::subset_batch(ver, i * size..(i + 1) * size).map_err(internal)?;
                (b.schema(), vec![b])
            }
            ["stats"] => {
                let b = state::stats_batch(state).map_err(internal)?;
                (b.schema(), vec![b])
            }
            ["rejects", shard] => {
                let b = state::rejects_batch(state, shard).map_err(nf)?;
                (b.schema(), vec![b])
            }
            ["embeddings", shard] => {
                let b = state::embeddings_batch(state, shard).map_err(nf)?;
                (b.schema(), vec![b])
            }
            ["changes", since] => {
                let since: u64 = since
                    .parse()
                    .map_err(|_| Status::invalid_argument("changes/<since>: since is a version number"))?;
                let b = state::changes_batch(&changes_after(state, since)?).map_err(internal)?;
                (b.schema(), vec![b])
            }
            _ => return Err(Status::not_found(format!("unknown ticket {ticket:?}"))),
        })
    }
}

/// Changes after `since`; `since` = 0 gives the current subset as one change set from empty.
fn changes_after(state: &State, since: u64) -> Result<Vec<state::Change>, Status> {
    match state.changes_since(since) {
        Ok(c) => Ok(c),
        Err(state::TooOld) if since == 0 => Ok(state
            .current()
            .map(|v| vec![(v.version, Arc::new(v.counts.iter().map(|(u, c)| (*u, *c as i64)).collect()))])
            .unwrap_or_default()),
        Err(state::TooOld) => Err(Status::failed_precondition(format!(
            "changes since version {since} are no longer kept: read the subset flight, then follow from its version"
        ))),
    }
}

#[tonic::async_trait]
impl FlightService for CurationFlight {
    type HandshakeStream = Stream<HandshakeResponse>;
    type ListFlightsStream = Stream<FlightInfo>;
    type DoGetStream = Stream<FlightData>;
    type DoPutStream = Stream<PutResult>;
    type DoExchangeStream = Stream<FlightData>;
    type DoActionStream = Stream<arrow_flight::Result>;
    type ListActionsStream = Stream<ActionType>;

    async fn handshake(
        &self,
        req: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        let mut s = req.into_inner();
        let first = s.next().await.transpose()?.unwrap_or_default();
        let out = HandshakeResponse { protocol_version: first.protocol_version, payload: first.payload };
        Ok(Response::new(stream::iter([Ok(out)]).boxed()))
    }

    async fn list_flights(&self, req: Request<Criteria>) -> Result<Response<Self::ListFlightsStream>, Status> {
        self.authorize(&req, Access::Read)?;
        // `embeddings/...` flights are listed only to callers who may read them.
        let embeddings = !self.needs_token(Access::Embeddings) || self.has_token(&req);
        let opts = self.opts.clone();
        let infos = self
            .blocking(move |s| {
                let mut paths: Vec<Vec<String>> =
                    ["scores", "subset", "stats", "rejects", "changes"].iter().map(|p| vec![p.to_string()]).collect();
                for shard in s.shards().into_iter().filter(|_| embeddings) {
                    if s.record(&shard).is_some_and(|r| r.embeddings.is_some() || r.via == "sidecar") {
                        paths.push(vec!["embeddings".into(), shard]);
                    }
                }
                Ok(paths.iter().filter_map(|p| CurationFlight::info(s, p, &opts).ok()).map(Ok).collect::<Vec<_>>())
            })
            .await?;
        Ok(Response::new(stream::iter(infos).boxed()))
    }

    async fn get_flight_info(&self, req: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        self.authorize(&req, Self::read_access(&req.get_ref().path))?;
        let path = req.into_inner().path;
        let opts = self.opts.clone();
        Ok(Response::new(self.blocking(move |s| CurationFlight::info(s, &path, &opts)).await?))
    }

    async fn poll_flight_info(&self, _req: Request<FlightDescriptor>) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented("use GetFlightInfo: every flight is ready"))
    }

    async fn get_schema(&self, req: Request<FlightDescriptor>) -> Result<Response<SchemaResult>, Status> {
        let info = self.get_flight_info(req).await?.into_inner();
        Ok(Response::new(SchemaResult { schema: info.schema }))
    }

    async fn do_get(&self, req: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        let raw = &req.get_ref().ticket;
        let access = if raw.starts_with(b"embeddings/") { Access::Embeddings } else { Access::Read };
        self.authorize(&req, access)?;
        let ticket = String::from_utf8(req.into_inner().ticket.to_vec())
            .map_err(|_| Status::invalid_argument("ticket is not UTF-8"))?;
        let opts = self.opts.clone();
        let (schema, batches) = if let Some(shard) = ticket.strip_prefix("scores/") {
            // Plan under the state's lock, read the table without it.
            let shard = shard.to_string();
            let plan = self
                .blocking(move |s| state::scores_plan(s, &shard).map_err(|e| Status::not_found(format!("{e:#}"))))
                .await?;
            let schema = plan.schema();
            let batches =
                tokio::task::spawn_blocking(move || plan.batches()).await.map_err(internal)?.map_err(internal)?;
            (schema, batches)
        } else {
            self.blocking(move |s| CurationFlight::ticket_batches(s, &ticket, &opts)).await?
        };
        let batches: Vec<Result<RecordBatch, FlightError>> = batches.into_iter().map(Ok).collect();
        Ok(Response::new(encode(schema, stream::iter(batches).boxed())))
    }

    async fn do_put(&self, req: Request<Streaming<FlightData>>) -> Result<Response<Self::DoPutStream>, Status> {
        self.authorize(&req, Access::Write)?;
        let opts = self.opts.clone();
        let mut input = req.into_inner();
        let first = input
            .next()
            .await
            .transpose()
            .map_err(|e| inbound(e, &opts))?
            .ok_or_else(|| Status::invalid_argument("empty DoPut"))?;
        let path = first.flight_descriptor.as_ref().map(|d| d.path.clone()).unwrap_or_default();
        let rest = stream::once(async { Ok(first) }).chain(input).map_err(FlightError::from);
        let mut decoded = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(rest);
        let mut batches = Vec::new();
        let (mut rows, mut bytes) = (0usize, 0usize);
        // Held until the put's batches are dropped, whichever way it ends.
        let mut reservation = Reservation { used: self.put_bytes.clone(), held: 0 };
        while let Some(b) = decoded.next().await {
            let b = b.map_err(|e| match e {
                FlightError::Tonic(status) => inbound(*status, &opts),
                e => Status::invalid_argument(format!("undecodable record batch: {e}")),
            })?;
            rows += b.num_rows();
            if rows > opts.max_put_rows {
                return Err(Status::invalid_argument(format!("batch too large: more than {} rows", opts.max_put_rows)));
            }
            let size = batch_bytes(&b);
            bytes = bytes.saturating_add(size);
            if bytes > opts.max_put_bytes {
                return Err(Status::resource_exhausted(format!(
                    "put too large: its record batches hold more than --max-put-bytes ({} bytes); send fewer rows \
                     per put",
                    opts.max_put_bytes
                )));
            }
            if !reservation.grow(size, opts.max_put_bytes_total) {
                return Err(Status::resource_exhausted(format!(
                    "the puts in flight hold --max-put-bytes-total ({} bytes) of record batches; retry when \
                     others have finished",
                    opts.max_put_bytes_total
                )));
            }
            batches.push(b);
        }
        let max_score_bytes = opts.max_score_bytes;
        let roots = opts.allow_shards_from.clone();
        let result = self
            .blocking(move |s| {
                let _reservation = reservation;
                let config = s.config().ok_or_else(|| Status::failed_precondition("no curation state yet"))?;
                let map = |e: put::PutError| match e {
                    put::PutError::Invalid(m) => Status::invalid_argument(m),
                    put::PutError::Exists(m) => Status::already_exists(m),
                    put::PutError::Precondition(m) => Status::failed_precondition(m),
                    put::PutError::Exhausted(m) => Status::resource_exhausted(m),
                    put::PutError::Denied(m) => Status::permission_denied(m),
                    put::PutError::Io(m) => Status::internal(m),
                };
                let p: Vec<&str> = path.iter().map(|s| s.as_str()).collect();
                match p.as_slice() {
                    ["scores", name] => {
                        let dir = config.input.scores.ok_or_else(|| {
                            Status::failed_precondition(
                                "the curation has no score directory ([input] scores / --scores)",
                            )
                        })?;
                        let (n, cols) = put::put_scores(&batches, name, &dir, max_score_bytes).map_err(map)?;
                        tracing::info!(file = %name, rows = n, "external scores stored");
                        Ok(serde_json::json!({"rows": n, "columns": cols, "file": dir.join(format!("{name}.parquet"))}))
                    }
                    ["shards"] => {
                        if roots.is_empty() {
                            return Err(Status::failed_precondition(
                                "this service links no shard paths: start it with --allow-shards-from DIR (the \
                                 directories whose files a shards put may link)",
                            ));
                        }
                        let dir =
                            config.input.shards.iter().find(|d| d.is_dir()).cloned().ok_or_else(|| {
                                Status::failed_precondition("the curation watches no shard directory")
                            })?;
                        let made = put::put_shards(&batches, &dir, &roots).map_err(map)?;
                        tracing::info!(shards = made.len(), "shard paths linked for ingestion");
                        Ok(serde_json::json!({"linked": made}))
                    }
                    _ => Err(Status::not_found(format!("no writable flight {path:?}: use scores/<name> or shards"))),
                }
            })
            .await?;
        let out = PutResult { app_metadata: result.to_string().into_bytes().into() };
        Ok(Response::new(stream::iter([Ok(out)]).boxed()))
    }

    async fn do_exchange(
        &self,
        req: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        self.authorize(&req, Access::Read)?;
        let mut input = req.into_inner();
        let first = input
            .next()
            .await
            .transpose()
            .map_err(|e| inbound(e, &self.opts))?
            .ok_or_else(|| Status::invalid_argument("empty DoExchange"))?;
        let path = first.flight_descriptor.map(|d| d.path).unwrap_or_default();
        let since = match path.iter().map(|s| s.as_str()).collect::<Vec<_>>().as_slice() {
            ["changes"] => 0,
            ["changes", s] => {
                s.parse().map_err(|_| Status::invalid_argument("changes/<since>: since is a version number"))?
            }
            _ => return Err(Status::not_found(format!("DoExchange serves changes/<since>, not {path:?}"))),
        };
        let backlog = self.blocking(move |s| changes_after(s, since)).await?;
        let next = backlog.last().map(|(v, _)| *v).unwrap_or(since);
        let (state, rx) = (self.state.clone(), self.versions.clone());
        let first_batch = state::changes_batch(&backlog).map_err(internal)?;
        // The backlog, then one batch per new version until the client closes its side (or goes away) or the
        // service stops. Messages the client sends after the descriptor are read and ignored.
        let live = stream::unfold((rx, next, state, input), |(mut rx, seen, state, mut input)| async move {
            loop {
                tokio::select! {
                    changed = rx.changed() => {
                        if changed.is_err() {
                            return None;
                        }
                    }
                    msg = input.next() => match msg {
                        Some(Ok(_)) => continue,
                        None | Some(Err(_)) => return None,
                    },
                }
                let st = state.clone();
                let got = tokio::task::spawn_blocking(move || st.lock().ok().and_then(|s| s.changes_since(seen).ok()))
                    .await
                    .ok()
                    .flatten();
                match got {
                    Some(c) if !c.is_empty() => {
                        let last = c.last().map(|(v, _)| *v).unwrap_or(seen);
                        let b = state::changes_batch(&c).map_err(|e| FlightError::ExternalError(e.into()));
                        return Some((b, (rx, last, state, input)));
                    }
                    Some(_) => continue,
                    None => {
                        return Some((
                            Err(FlightError::protocol("changes fell out of the window; start again")),
                            (rx, u64::MAX, state, input),
                        ));
                    }
                }
            }
        });
        let all = stream::once(async move { Ok(first_batch) }).chain(live).boxed();
        Ok(Response::new(encode(state::changes_schema(), all)))
    }

    async fn do_action(&self, _req: Request<Action>) -> Result<Response<Self::DoActionStream>, Status> {
        Err(Status::unimplemented("no actions"))
    }

    async fn list_actions(&self, _req: Request<Empty>) -> Result<Response<Self::ListActionsStream>, Status> {
        Ok(Response::new(stream::empty().boxed()))
    }
}

/// Serves `out` until `stop` resolves.
pub async fn serve(
    out: PathBuf,
    opts: FlightOptions,
    stop: impl std::future::Future<Output = ()> + Send,
) -> crate::Result<()> {
    let state = Arc::new(Mutex::new(State::new(&out)));
    let (tx, rx) = tokio::sync::watch::channel(0u64);
    let refresher = {
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                let st = state.clone();
                let r = tokio::task::spawn_blocking(move || {
                    st.lock().map_err(|_| crate::Error::Flight("the state lock is poisoned".into())).and_then(
                        |mut s| {
                            let new = s.refresh()?;
                            Ok(new.then(|| s.current().map(|v| v.version).unwrap_or(0)))
                        },
                    )
                })
                .await;
                match r {
                    Ok(Ok(Some(v))) => {
                        let _ = tx.send(v);
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "could not read the curation state"),
                    _ => {}
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let svc =
        CurationFlight { state, opts: Arc::new(opts.clone()), versions: rx, put_bytes: Arc::new(AtomicUsize::new(0)) };
    let server = FlightServiceServer::new(svc)
        .max_decoding_message_size(opts.max_message_bytes)
        .max_encoding_message_size(opts.max_message_bytes);
    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = &opts.tls {
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| crate::Error::io(p, e));
        let identity = tonic::transport::Identity::from_pem(read(cert)?, read(key)?);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| crate::Error::Flight(format!("TLS: {e}")))?;
    }
    tracing::info!(addr = %opts.addr, tls = opts.tls.is_some(), "Flight service listening");
    // On shutdown, stop the refresher first: that drops the version sender, which ends the open change
    // streams, so the graceful shutdown does not wait on them forever.
    let refresher_handle = refresher.abort_handle();
    let stop = async move {
        stop.await;
        refresher_handle.abort();
    };
    let result = builder.add_service(server).serve_with_shutdown(opts.addr, stop).await;
    refresher.abort();
    result.map_err(|e| crate::Error::Flight(format!("on {}: {e}", opts.addr)))
}

/// Runs [`serve`] on its own runtime in a new thread; the returned sender stops it.
pub fn spawn(
    out: PathBuf,
    opts: FlightOptions,
) -> crate::Result<(tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<crate::Result<()>>)> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| crate::Error::Flight(format!("starting its runtime: {e}")))?;
    let handle = std::thread::spawn(move || {
        rt.block_on(serve(out, opts, async move {
            let _ = rx.await;
        }))
    });
    Ok((tx, handle))
}

/// Runs [`serve`] on a runtime of its own until SIGINT/SIGTERM ([`crate::STOP`], after
/// [`crate::install_stop_signals`]).
pub fn serve_until_stopped(out: PathBuf, opts: FlightOptions) -> crate::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| crate::Error::Flight(format!("starting its runtime: {e}")))?;
    rt.block_on(serve(out, opts, async {
        while !crate::STOP.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }))
}
