//! Regression tests for the Flight service's faults found by the fault sweep (issue 19, points 6, 7 and 10):
//! unbounded put memory and score directory, `shards` puts linking any path, embeddings readable without the
//! token, a DoExchange left open after the client's half-close, `flyt serve` over a missing directory, and an
//! over-limit message reported as a transport error. Each starts `flyt serve` with its limits set low.

mod common;

use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arrow_array::{Float64Array, RecordBatch, StringArray};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{Criteria, FlightData, FlightDescriptor, Ticket};
use common::{free_port, ok, py_args, spawn};
use flyt::synth::SynthSidecars;
use futures::{Stream, StreamExt};
use tonic::transport::Channel;

const TOKEN: &str = "test-token-0123456789";

type Client = FlightServiceClient<Channel>;

/// A child process killed when dropped (a failing test leaves no service behind).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A finished curation of two small sidecar shards in `p/out` (with `extra` arguments).
fn curated(p: &Path, extra: &[&str]) {
    SynthSidecars { shards: 2, rows_per_shard: 40, dim: 8, seed: 19, ..Default::default() }
        .write(&p.join("pool"))
        .unwrap();
    let mut args = vec!["curate", "--shards", "pool", "--out", "out"];
    args.extend_from_slice(extra);
    ok(common::flyt(&args, p));
}

/// `flyt serve --out out` in `p` with `args`, once it listens and has read the curation's state.
fn serve(p: &Path, args: &[&str]) -> (Running, u16, tokio::runtime::Runtime) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut all = vec!["serve", "--out", "out", "--addr", &addr];
    all.extend_from_slice(args);
    let mut child = Running(spawn(&all, p));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    rt.block_on(async {
        loop {
            assert!(Instant::now() < until, "the service did not come up");
            if child.0.try_wait().unwrap().is_some() {
                let mut stderr = String::new();
                std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
                panic!("flyt {all:?} exited: {stderr}");
            }
            if let Ok(mut c) = try_client(port).await {
                let mut req = tonic::Request::new(FlightDescriptor::new_path(vec!["subset".into()]));
                authed(&mut req);
                if c.get_flight_info(req).await.is_ok() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (child, port, rt)
}

async fn try_client(port: u16) -> Result<Client, tonic::transport::Error> {
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await?;
    Ok(FlightServiceClient::new(channel).max_decoding_message_size(usize::MAX))
}

async fn client(port: u16) -> Client {
    try_client(port).await.unwrap()
}

fn authed<T>(req: &mut tonic::Request<T>) {
    req.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
}

/// A score batch of `rows` distinct, well-spread uids from `start` and one float column `quality`.
fn score_batch(start: u64, rows: usize) -> RecordBatch {
    let mix = |x: u64| {
        let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let ids = start..start + rows as u64;
    let uids = StringArray::from_iter_values(ids.clone().map(|i| format!("{:016x}{i:016x}", mix(i))));
    let q = Float64Array::from_iter_values(ids.map(|i| (i % 97) as f64 / 7.0));
    RecordBatch::try_from_iter([("uid", Arc::new(uids) as _), ("quality", Arc::new(q) as _)]).unwrap()
}

/// The FlightData of a put to `path`: `batches`, each batch one message however large.
fn put_stream(
    path: &[&str],
    batches: impl Stream<Item = RecordBatch> + Send + 'static,
) -> impl Stream<Item = FlightData> + Send + 'static {
    FlightDataEncoderBuilder::new()
        .with_max_flight_data_size(usize::MAX)
        .with_flight_descriptor(Some(FlightDescriptor::new_path(path.iter().map(|s| s.to_string()).collect())))
        .build(batches.map(Ok))
        .map(|d| d.expect("the client encodes its batches"))
}

/// Puts `data` with the token; the service's status or its JSON answer.
async fn put(c: &mut Client, data: impl Stream<Item = FlightData> + Send + 'static) -> Result<String, tonic::Status> {
    let mut req = tonic::Request::new(data);
    authed(&mut req);
    let mut answer = c.do_put(req).await?.into_inner();
    let r = answer.next().await.expect("a put result")?;
    Ok(String::from_utf8_lossy(&r.app_metadata).into_owned())
}

fn refused(r: Result<String, tonic::Status>, code: tonic::Code, want: &str) -> String {
    let e = r.expect_err("the put is refused");
    assert_eq!(e.code(), code, "{e}");
    assert!(e.message().contains(want), "{want:?} not in {e}");
    e.message().to_string()
}

/// An endless put of the same batch; counts the batches the client was asked for.
fn endless(batch: RecordBatch, pulled: Arc<AtomicUsize>) -> impl Stream<Item = FlightData> + Send + 'static {
    put_stream(
        &["scores", "endless"],
        futures::stream::repeat(batch).inspect(move |_| {
            pulled.fetch_add(1, Ordering::SeqCst);
        }),
    )
}

#[test]
fn put_bytes_were_unbounded_a_put_is_refused_as_its_batches_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("ext")).unwrap();
    curated(p, &["--scores", "ext"]);
    let (_serve, port, rt) = serve(p, &["--token", TOKEN, "--max-put-bytes", "1000000"]);
    rt.block_on(async {
        let mut c = client(port).await;
        // ~100 kB a batch, sent forever: the service must refuse once it holds more than 1 MB, not wait for an
        // end that never comes.
        let batch = score_batch(0, 2_000);
        let pulled = Arc::new(AtomicUsize::new(0));
        let r = tokio::time::timeout(Duration::from_secs(30), put(&mut c, endless(batch, pulled.clone())))
            .await
            .expect("the endless put was refused in time");
        let msg = refused(r, tonic::Code::ResourceExhausted, "--max-put-bytes (1000000 bytes)");
        assert!(!msg.contains("total"), "{msg}");
        let n = pulled.load(Ordering::SeqCst);
        assert!(n < 200, "{n} batches of 100 kB were sent before the refusal");
        // A put within the limit is stored: the refused one gave its bytes back.
        let got = put(&mut c, put_stream(&["scores", "small"], futures::stream::iter([score_batch(0, 1_000)])))
            .await
            .unwrap();
        assert!(got.contains("\"rows\":1000"), "{got}");
    });
    let files: Vec<String> = std::fs::read_dir(p.join("ext"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["small.parquet"]);
}

#[test]
fn concurrent_puts_were_unbounded_their_total_is_shared_and_given_back() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("ext")).unwrap();
    curated(p, &["--scores", "ext"]);
    let (_serve, port, rt) =
        serve(p, &["--token", TOKEN, "--max-put-bytes", "4000000", "--max-put-bytes-total", "6000000"]);
    rt.block_on(async {
        // Put A sends ~2.6 MB (6 batches of 10,000 rows of ~44 bytes) and stays open.
        let (tx, rx) = futures::channel::mpsc::unbounded::<RecordBatch>();
        for i in 0..6 {
            tx.unbounded_send(score_batch(i * 10_000, 10_000)).unwrap();
        }
        let mut ca = client(port).await;
        let a = tokio::spawn(async move { put(&mut ca, put_stream(&["scores", "a"], rx)).await });
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert!(!a.is_finished(), "put A ended early: {:?}", a.await);
        // Put B, endless: refused by the shared budget before its own 4 MB limit.
        let mut c = client(port).await;
        let pulled = Arc::new(AtomicUsize::new(0));
        let r = tokio::time::timeout(Duration::from_secs(30), put(&mut c, endless(score_batch(0, 2_000), pulled)))
            .await
            .expect("put B was refused in time");
        refused(r, tonic::Code::ResourceExhausted, "--max-put-bytes-total (6000000 bytes)");
        // A goes away without finishing: its ~2.6 MB come back, and so did B's, so ~3.5 MB fit again (with
        // either still held they would not).
        a.abort();
        let _ = a.await;
        drop(tx);
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let batches: Vec<RecordBatch> = (0..8).map(|i| score_batch(i * 10_000, 10_000)).collect();
            match put(&mut c, put_stream(&["scores", "c"], futures::stream::iter(batches))).await {
                Ok(got) => {
                    assert!(got.contains("\"rows\":80000"), "{got}");
                    break;
                }
                Err(e) if e.code() == tonic::Code::ResourceExhausted && Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => panic!("the budget was not given back: {e}"),
            }
        }
    });
}

#[test]
fn score_directory_was_unbounded_a_put_past_max_score_bytes_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("ext")).unwrap();
    curated(p, &["--scores", "ext"]);
    let (_serve, port, rt) = serve(p, &["--token", TOKEN, "--max-score-bytes", "30000"]);
    rt.block_on(async {
        let mut c = client(port).await;
        put(&mut c, put_stream(&["scores", "small"], futures::stream::iter([score_batch(0, 200)]))).await.unwrap();
        let r = put(&mut c, put_stream(&["scores", "big"], futures::stream::iter([score_batch(0, 2_000)]))).await;
        refused(r, tonic::Code::ResourceExhausted, "--max-score-bytes (30000 bytes)");
    });
    let mut files: Vec<String> = std::fs::read_dir(p.join("ext"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["small.parquet"]);
}

fn paths_batch(paths: &[&Path]) -> RecordBatch {
    let a = StringArray::from_iter_values(paths.iter().map(|p| p.to_str().unwrap()));
    RecordBatch::try_from_iter([("path", Arc::new(a) as _)]).unwrap()
}

async fn put_paths(c: &mut Client, paths: &[&Path]) -> Result<String, tonic::Status> {
    put(c, put_stream(&["shards"], futures::stream::iter([paths_batch(paths)]))).await
}

fn pool_names(p: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(p.join("pool"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn shards_put_linked_a_symlink_to_etc_shadow() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    curated(p, &[]);
    let before = pool_names(p);
    std::fs::create_dir_all(p.join("allowed/sub")).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", p.join("allowed/x.tar")).unwrap();
    let (_serve, port, rt) = serve(p, &["--token", TOKEN, "--allow-shards-from", "allowed"]);
    rt.block_on(async {
        let mut c = client(port).await;
        let r = put_paths(&mut c, &[&p.join("allowed/x.tar")]).await;
        refused(r, tonic::Code::PermissionDenied, "outside the directories --allow-shards-from names");
    });
    assert_eq!(pool_names(p), before);
}

#[test]
fn shards_put_linked_a_tar_outside_every_pool_fifos_and_directories() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    curated(p, &[]);
    let before = pool_names(p);
    for d in ["allowed/sub", "allowed/00000007.tar", "elsewhere"] {
        std::fs::create_dir_all(p.join(d)).unwrap();
    }
    std::fs::write(p.join("elsewhere/00000009.tar"), b"not really a tar").unwrap();
    std::fs::write(p.join("allowed/sub/real.tar"), b"not really a tar").unwrap();
    std::os::unix::fs::symlink(p.join("allowed/sub/real.tar"), p.join("allowed/00000005.tar")).unwrap();
    std::os::unix::fs::symlink(p.join("elsewhere/00000009.tar"), p.join("allowed/00000008.tar")).unwrap();
    let fifo = std::process::Command::new("mkfifo").arg(p.join("allowed/00000006.tar")).status().unwrap();
    assert!(fifo.success());

    // No --allow-shards-from: a shards put is refused, naming the flag.
    let (serve1, port, rt) = serve(p, &["--token", TOKEN]);
    rt.block_on(async {
        let mut c = client(port).await;
        let r = put_paths(&mut c, &[&p.join("allowed/sub/real.tar")]).await;
        refused(r, tonic::Code::FailedPrecondition, "--allow-shards-from");
    });
    drop(serve1);
    assert_eq!(pool_names(p), before);

    let (_serve, port, rt) = serve(p, &["--token", TOKEN, "--allow-shards-from", "allowed"]);
    rt.block_on(async {
        let mut c = client(port).await;
        let outside = put_paths(&mut c, &[&p.join("elsewhere/00000009.tar")]).await;
        refused(outside, tonic::Code::PermissionDenied, "--allow-shards-from");
        let outside_via_link = put_paths(&mut c, &[&p.join("allowed/00000008.tar")]).await;
        refused(outside_via_link, tonic::Code::PermissionDenied, "--allow-shards-from");
        let fifo = put_paths(&mut c, &[&p.join("allowed/00000006.tar")]).await;
        refused(fifo, tonic::Code::InvalidArgument, "not a regular file");
        let directory = put_paths(&mut c, &[&p.join("allowed/00000007.tar")]).await;
        refused(directory, tonic::Code::InvalidArgument, "not a regular file");
        // A bad row refuses the whole put: the good row with it is not linked.
        let mixed = put_paths(&mut c, &[&p.join("allowed/00000005.tar"), &p.join("elsewhere/00000009.tar")]).await;
        refused(mixed, tonic::Code::PermissionDenied, "row 1");
        assert_eq!(pool_names(p), before);
        // A file under the allowed directory (here by a symlink in it) is linked to its resolved path.
        let got = put_paths(&mut c, &[&p.join("allowed/00000005.tar")]).await.unwrap();
        assert!(got.contains("00000005.tar"), "{got}");
    });
    let link = std::fs::read_link(p.join("pool/00000005.tar")).unwrap();
    assert_eq!(link, std::fs::canonicalize(p.join("allowed/sub/real.tar")).unwrap());
    let mut want = before.clone();
    want.push("00000005.tar".into());
    want.sort();
    assert_eq!(pool_names(p), want);
}

async fn list(c: &mut Client, token: bool) -> Vec<String> {
    let mut req = tonic::Request::new(Criteria::default());
    if token {
        authed(&mut req);
    }
    let mut infos = c.list_flights(req).await.unwrap().into_inner();
    let mut names = Vec::new();
    while let Some(i) = infos.next().await {
        names.push(i.unwrap().flight_descriptor.unwrap().path.join("/"));
    }
    names
}

async fn get(c: &mut Client, ticket: &str, token: bool) -> Result<usize, tonic::Status> {
    let mut req = tonic::Request::new(Ticket::new(ticket.to_string()));
    if token {
        authed(&mut req);
    }
    let s = c.do_get(req).await?.into_inner();
    let mut batches = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
        s.map(|r| r.map_err(arrow_flight::error::FlightError::from)),
    );
    let mut rows = 0;
    while let Some(b) = batches.next().await {
        rows += b.map_err(tonic::Status::from)?.num_rows();
    }
    Ok(rows)
}

#[test]
fn embeddings_were_readable_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    curated(p, &[]);
    let (serve1, port, rt) = serve(p, &["--token", TOKEN]);
    let shard = rt.block_on(async {
        let mut c = client(port).await;
        let listed = list(&mut c, true).await;
        let embeddings: Vec<&String> = listed.iter().filter(|n| n.starts_with("embeddings/")).collect();
        assert_eq!(embeddings.len(), 2, "{listed:?}");
        let shard = embeddings[0].trim_start_matches("embeddings/").to_string();
        assert_eq!(get(&mut c, &format!("embeddings/{shard}"), true).await.unwrap(), 40);
        // Without the token: not listed, no flight info, no rows; the other flights stay public.
        let public = list(&mut c, false).await;
        assert!(public.iter().all(|n| !n.starts_with("embeddings/")), "{public:?}");
        assert!(public.iter().any(|n| n == "stats"), "{public:?}");
        let info =
            c.get_flight_info(FlightDescriptor::new_path(vec!["embeddings".into(), shard.clone()])).await.unwrap_err();
        assert_eq!(info.code(), tonic::Code::Unauthenticated, "{info}");
        assert!(info.message().contains("--public-embeddings"), "{info}");
        let schema =
            c.get_schema(FlightDescriptor::new_path(vec!["embeddings".into(), shard.clone()])).await.unwrap_err();
        assert_eq!(schema.code(), tonic::Code::Unauthenticated, "{schema}");
        let e = get(&mut c, &format!("embeddings/{shard}"), false).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
        assert_eq!(get(&mut c, "stats", false).await.unwrap(), 2);
        shard
    });
    drop(serve1);
    // --public-embeddings (and no token at all): readable by anyone again.
    let (_serve, port, rt) = serve(p, &["--public-embeddings"]);
    rt.block_on(async {
        let mut c = client(port).await;
        assert_eq!(list(&mut c, false).await.iter().filter(|n| n.starts_with("embeddings/")).count(), 2);
        assert_eq!(get(&mut c, &format!("embeddings/{shard}"), false).await.unwrap(), 40);
    });
}

#[test]
fn changes_exchange_stayed_open_after_the_client_half_closed() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    curated(p, &[]);
    let (_serve, port, rt) = serve(p, &[]);
    rt.block_on(async {
        let mut c = client(port).await;
        let (tx, rx) = futures::channel::mpsc::unbounded::<FlightData>();
        tx.unbounded_send(
            FlightData::new().with_descriptor(FlightDescriptor::new_path(vec!["changes".into(), "0".into()])),
        )
        .unwrap();
        let response = c.do_exchange(rx).await.unwrap().into_inner();
        let mut batches = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
            response.map(|r| r.map_err(arrow_flight::error::FlightError::from)),
        );
        // The backlog (the whole subset as one change set) arrives.
        let first = tokio::time::timeout(Duration::from_secs(30), batches.next()).await.expect("the backlog");
        assert!(first.expect("a batch").expect("a good batch").num_rows() > 0);
        // The client closes its sending side: the service ends the stream.
        drop(tx);
        let end = tokio::time::timeout(Duration::from_secs(10), batches.next())
            .await
            .expect("the stream ends after the client's half-close");
        assert!(end.is_none(), "{end:?}");
    });
}

#[test]
fn serve_served_a_missing_out_directory() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let port = free_port().to_string();
    let mut child = Running(spawn(&["serve", "--out", "no-such-out", "--addr", &format!("127.0.0.1:{port}")], p));
    let until = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < until, "flyt serve is serving a directory that does not exist");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no-such-out"), "{stderr}");
    assert!(!p.join("no-such-out").exists());
}

const PY_BIG_MESSAGE: &str = r#"
import sys, pyarrow as pa, pyarrow.flight as fl
port, token = sys.argv[1], sys.argv[2]
c = fl.connect(f"grpc://127.0.0.1:{port}")
auth = fl.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())])
n = 60_000
t = pa.table({"uid": [f"{i:032x}" for i in range(n)], "quality": pa.array([0.5] * n, pa.float64())})
assert t.nbytes > 2_000_000, t.nbytes
try:
    w, r = c.do_put(fl.FlightDescriptor.for_path("scores", "big"), t.schema, options=auth)
    w.write_table(t)  # one record batch, one message
    w.done_writing()
    r.read()
    w.close()
    print("accepted")
except Exception as e:
    print(type(e).__name__, str(e).replace("\n", " "))
"#;

#[test]
fn a_batch_over_max_message_bytes_was_a_transport_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("ext")).unwrap();
    curated(p, &["--scores", "ext"]);
    let (_serve, port, rt) = serve(p, &["--token", TOKEN, "--max-message-bytes", "1000000"]);
    rt.block_on(async {
        let mut c = client(port).await;
        // One batch of ~2.6 MB in one message.
        let r = put(&mut c, put_stream(&["scores", "big"], futures::stream::iter([score_batch(0, 60_000)]))).await;
        refused(r, tonic::Code::ResourceExhausted, "--max-message-bytes (1000000 bytes)");
        // The service is still there and takes a put under the limit.
        put(&mut c, put_stream(&["scores", "small"], futures::stream::iter([score_batch(0, 1_000)]))).await.unwrap();
    });
    // What pyarrow's client sees.
    let out = py_args(PY_BIG_MESSAGE, &[&port.to_string(), TOKEN]);
    assert!(out.contains("--max-message-bytes (1000000 bytes)"), "{out}");
    assert!(out.to_lowercase().contains("resource exhausted") || out.contains("RESOURCE_EXHAUSTED"), "{out}");
    assert!(!p.join("ext/big.parquet").exists());
}
