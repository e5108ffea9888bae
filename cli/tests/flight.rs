//! The Flight service with real clients: python's `pyarrow.flight` lists, reads and writes while a followed
//! curation runs; a Rust client follows the subset's changes live over DoExchange; auth and TLS.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{FlightData, FlightDescriptor};
use common::{free_port, ok, py_args, spawn};
use flyt::synth::SynthSidecars;
use futures::StreamExt;

const TOKEN: &str = "test-token-0123456789";

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn manifest(out: &Path) -> serde_json::Value {
    std::fs::read(out.join("manifest.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

fn shards_in(out: &Path) -> usize {
    manifest(out)["shards"].as_array().map(|a| a.len()).unwrap_or(0)
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

const CLIENT: &str = r#"
import sys, time, json, numpy as np, pyarrow as pa, pyarrow.flight as fl
port, token, out, new_shard = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
c = fl.connect(f"grpc://127.0.0.1:{port}")
auth = fl.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())])
names = sorted("/".join(p.decode() for p in f.descriptor.path) for f in c.list_flights(options=auth))
assert {"scores", "subset", "stats", "rejects", "changes"} <= set(names), names
assert sum(n.startswith("embeddings/") for n in names) == 3, names
# embeddings flights are the token's: not listed without it
public = sorted("/".join(p.decode() for p in f.descriptor.path) for f in c.list_flights())
assert public == [n for n in names if not n.startswith("embeddings/")], public

def read(path, opts=None):
    info = c.get_flight_info(fl.FlightDescriptor.for_path(*path), options=opts)
    tables = [c.do_get(e.ticket, options=opts).read_all() for e in info.endpoints]
    return info, pa.concat_tables(tables) if tables else None

info, scores = read(["scores"])
assert len(info.endpoints) == 3 and scores.num_rows == info.total_records, (len(info.endpoints), scores.num_rows)
assert scores.column("score").null_count == scores.num_rows  # the mix waits for `quality`
info, subset = read(["subset"])
v0 = json.loads(info.app_metadata)["version"]
assert subset.num_rows == 0

def put(name, table, opts):
    w, r = c.do_put(fl.FlightDescriptor.for_path(*name), table.schema, options=opts)
    w.write_table(table)
    w.done_writing()
    meta = r.read()
    w.close()
    return json.loads(meta.to_pybytes()) if meta is not None else None

def refused(name, table, opts, want):
    try:
        put(name, table, opts)
    except Exception as e:
        assert want in str(e), (want, type(e).__name__, str(e))
        return type(e).__name__
    raise AssertionError(f"put {name} was accepted: {want}")

rows = scores.num_rows
uids = sorted(set(scores.column("uid").to_pylist()))  # a uid in two shards is one pool row
quality = pa.table({"uid": uids, "quality": pa.array([(i % 7) / 3.0 for i in range(len(uids))], pa.float64())})
kinds = []
kinds.append(refused(["scores", "q"], quality, None, "token"))
kinds.append(refused(["scores", "q"], quality, fl.FlightCallOptions(headers=[(b"authorization", b"Bearer wrong-token-00000000")]), "token"))
refused(["scores", "q"], pa.table({"uid": ["not-hex"] + uids[1:], "quality": quality.column("quality")}), auth, "uid")
refused(["scores", "q"], pa.table({"uid": uids, "quality": [float("nan")] + quality.column("quality").to_pylist()[1:]}), auth, "not a finite number")
refused(["scores", "q"], pa.table({"uid": uids, "quality": [str(x) for x in range(len(uids))]}), auth, "not a float")
refused(["scores", "q"], pa.table({"uid": uids[:2] + uids[:1], "quality": [1.0, 2.0, 3.0]}), auth, "twice")
refused(["scores", "q"], pa.table({"uid": uids * 2, "quality": [1.0] * (2 * len(uids))}), auth, "too large")
refused(["nope"], quality, auth, "no writable flight")
try:
    c.get_flight_info(fl.FlightDescriptor.for_path("nope"))
    raise AssertionError("an unknown flight was found")
except KeyError as e:  # pyarrow raises gRPC NOT_FOUND as ArrowKeyError
    assert "no flight" in str(e), str(e)
print("refusals", kinds)

got = put(["scores", "quality_a"], quality, auth)
assert got["rows"] == len(uids) and got["columns"] == ["quality"], got
refused(["scores", "quality_a"], quality, auth, "immutable")

# The mix now has its inputs: wait for a new subset version.
deadline = time.time() + 60
while True:
    info, subset = read(["subset"])
    meta = json.loads(info.app_metadata)
    if meta["version"] > v0 and subset.num_rows > 0 and json.load(open(out + "/manifest.json"))["pool"]["scored"] == len(uids):
        break
    assert time.time() < deadline, "no new subset"
    time.sleep(0.1)
time.sleep(1.0)
info, subset = read(["subset"])
v1 = json.loads(info.app_metadata)["version"]
npy = np.load(out + "/subset.npy")
from collections import Counter
want = Counter(f"{int(a):016x}{int(b):016x}" for a, b in zip(npy["f0"], npy["f1"]))
flight = dict(zip(subset.column("uid").to_pylist(), subset.column("count").to_pylist()))
assert flight == dict(want), (len(flight), len(want))
_, changes = read(["changes", "0"])
total = Counter()
for u, d in zip(changes.column("uid").to_pylist(), changes.column("delta").to_pylist()):
    total[u] += d
assert {u: n for u, n in total.items() if n} == flight
_, scores = read(["scores"])
assert scores.column("score").null_count == 0

_, stats = read(["stats"])
assert stats.num_rows == 3 and sum(stats.column("rows").to_pylist()) == rows
_, rejects = read(["rejects"])
_, emb = read(["embeddings", names[[n.startswith("embeddings/") for n in names].index(True)].split("/")[1]], auth)
assert emb.schema.field("image").type.list_size == 16 and emb.num_rows > 0

# A new shard by path: the followed curation ingests it.
got = put(["shards"], pa.table({"path": [new_shard + ".parquet", new_shard + ".npz"]}), auth)
assert len(got["linked"]) == 2, got
print("ok", v0, v1, len(uids), subset.num_rows, rejects.num_rows)
"#;

#[test]
fn pyarrow_client_lists_reads_and_writes_during_a_followed_curation() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    SynthSidecars { shards: 3, rows_per_shard: 150, dim: 16, duplicates: 0.05, seed: 12, ..Default::default() }
        .write(&p.join("pool"))
        .unwrap();
    SynthSidecars { shards: 1, rows_per_shard: 100, dim: 16, first_shard: 3, seed: 12, ..Default::default() }
        .write(&p.join("later"))
        .unwrap();
    std::fs::create_dir_all(p.join("ext")).unwrap();
    common::mixer(&p.join("mix.safetensors"), &["clip_score", "quality"], &[1.0, 0.5]);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let child = spawn(
        &[
            "curate",
            "--shards",
            "pool",
            "--out",
            "out",
            "--mixer",
            "mix.safetensors",
            "--scores",
            "ext",
            "--follow",
            "--idle-exit",
            "8",
            "--poll-ms",
            "50",
            "--publish-ms",
            "0",
            "--serve",
            &addr,
            "--token",
            TOKEN,
            "--max-put-rows",
            "600",
            "--allow-shards-from",
            "later",
        ],
        p,
    );
    wait_for("the shards", || shards_in(&p.join("out")) == 3 && listening(port));
    let out = py_args(
        CLIENT,
        &[&port.to_string(), TOKEN, p.join("out").to_str().unwrap(), p.join("later/00000003").to_str().unwrap()],
    );
    assert!(out.contains("ok "), "{out}");
    wait_for("the shard put by path", || shards_in(&p.join("out")) == 4);
    let stdout = ok(child.wait_with_output().unwrap());
    assert!(stdout.contains("4 shards committed"), "{stdout}");
    // Refused puts wrote nothing: the score directory holds the one accepted file.
    let files: Vec<String> = std::fs::read_dir(p.join("ext"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["quality_a.parquet"]);
}

#[test]
fn rust_client_follows_changes_live_and_auth_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    SynthSidecars { shards: 2, rows_per_shard: 200, dim: 16, seed: 13, ..Default::default() }
        .write(&p.join("pool"))
        .unwrap();
    SynthSidecars { shards: 1, rows_per_shard: 200, dim: 16, first_shard: 2, seed: 13, ..Default::default() }
        .write(&p.join("later"))
        .unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let child = spawn(
        &[
            "curate",
            "--shards",
            "pool",
            "--out",
            "out",
            "--follow",
            "--idle-exit",
            "4",
            "--poll-ms",
            "50",
            "--publish-ms",
            "0",
            "--serve",
            &addr,
            "--token",
            TOKEN,
        ],
        p,
    );
    wait_for("the shards", || shards_in(&p.join("out")) == 2 && listening(port));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (before, after, delta_sum) = rt.block_on(async {
        let mut client = client(&format!("http://{addr}")).await;
        // Unauthenticated writes are refused with Unauthenticated.
        let put = futures::stream::iter([
            FlightData::new().with_descriptor(FlightDescriptor::new_path(vec!["scores".into(), "x".into()]))
        ]);
        let e = client.do_put(put).await.expect_err("refused");
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        // The current version, then a live stream of changes after it.
        let info = loop {
            // the service reads the directory every 100 ms
            match client.get_flight_info(FlightDescriptor::new_path(vec!["subset".into()])).await {
                Ok(i) => break i.into_inner(),
                Err(e) if e.code() == tonic::Code::Unavailable => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => panic!("{e}"),
            }
        };
        let v: serde_json::Value = serde_json::from_slice(&info.app_metadata).unwrap();
        let version = v["version"].as_u64().unwrap();
        let before: u64 = read_subset_total(&mut client).await;
        let first =
            FlightData::new().with_descriptor(FlightDescriptor::new_path(vec!["changes".into(), version.to_string()]));
        let (tx, rx) = futures::channel::mpsc::unbounded::<FlightData>();
        tx.unbounded_send(first).unwrap();
        let response = client.do_exchange(rx).await.unwrap().into_inner();
        let mut batches = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
            response.map(|r| r.map_err(arrow_flight::error::FlightError::from)),
        );
        // A shard lands; the change arrives on the open stream.
        for ext in ["npz", "parquet"] {
            std::fs::rename(p.join(format!("later/00000002.{ext}")), p.join(format!("pool/00000002.{ext}"))).unwrap();
        }
        let mut delta_sum = 0i64;
        let mut got_version = version;
        while got_version == version || delta_sum == 0 {
            let b = tokio::time::timeout(Duration::from_secs(60), batches.next())
                .await
                .expect("a change in time")
                .unwrap()
                .unwrap();
            let versions = b.column(0).as_any().downcast_ref::<arrow_array::UInt64Array>().unwrap();
            let deltas = b.column(2).as_any().downcast_ref::<arrow_array::Int64Array>().unwrap();
            got_version = versions.iter().flatten().max().unwrap_or(version);
            delta_sum += deltas.iter().flatten().sum::<i64>();
        }
        drop(tx);
        // wait until the shard is in the published subset, then compare totals
        while shards_in(&p.join("out")) < 3 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        (before, read_subset_total(&mut client).await, delta_sum)
    });
    assert!(after > before);
    assert!(delta_sum > 0 && delta_sum as u64 <= after - before, "{delta_sum} vs {before} → {after}");
    ok(child.wait_with_output().unwrap());

    // A service with --auth-reads refuses reads without the token.
    let port2 = free_port();
    let mut serve =
        spawn(&["serve", "--out", "out", "--addr", &format!("127.0.0.1:{port2}"), "--token", TOKEN, "--auth-reads"], p);
    wait_for("the service", || listening(port2));
    rt.block_on(async {
        let mut client = client(&format!("http://127.0.0.1:{port2}")).await;
        let e = client.list_flights(arrow_flight::Criteria::default()).await.expect_err("refused");
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let mut req = tonic::Request::new(arrow_flight::Criteria::default());
        req.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        let n = client.list_flights(req).await.unwrap().into_inner().count().await;
        assert!(n >= 5);
    });
    serve.kill().unwrap();
    let _ = serve.wait();
}

async fn client(url: &str) -> FlightServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(url.to_string()).unwrap().connect().await.unwrap();
    FlightServiceClient::new(channel)
}

async fn read_subset_total(client: &mut FlightServiceClient<tonic::transport::Channel>) -> u64 {
    let info = client.get_flight_info(FlightDescriptor::new_path(vec!["subset".into()])).await.unwrap().into_inner();
    let mut total = 0u64;
    for e in info.endpoint {
        let s = client.do_get(e.ticket.unwrap()).await.unwrap().into_inner();
        let mut b = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
            s.map(|r| r.map_err(arrow_flight::error::FlightError::from)),
        );
        while let Some(batch) = b.next().await {
            let batch = batch.unwrap();
            let c = batch.column(1).as_any().downcast_ref::<arrow_array::UInt32Array>().unwrap();
            total += c.iter().flatten().map(|x| x as u64).sum::<u64>();
        }
    }
    total
}

const TLS_CLIENT: &str = r#"
import sys, pyarrow.flight as fl
port, cert = sys.argv[1], sys.argv[2]
c = fl.connect(f"grpc+tls://localhost:{port}", tls_root_certs=open(cert, "rb").read())
print(len(list(c.list_flights())))
try:
    list(fl.connect(f"grpc://localhost:{port}").list_flights())
    print("plaintext accepted")
except fl.FlightError:
    print("plaintext refused")
"#;

#[test]
fn tls_serves_tls_only() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    SynthSidecars { shards: 1, rows_per_shard: 50, dim: 8, seed: 14, ..Default::default() }
        .write(&p.join("pool"))
        .unwrap();
    ok(common::flyt(&["curate", "--shards", "pool", "--out", "out"], p));
    let o = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost", "-keyout", "key.pem", "-out", "cert.pem"])
        .current_dir(p)
        .output()
        .expect("openssl (Debian's openssl package) makes the test certificate");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let port = free_port();
    let mut serve = spawn(
        &[
            "serve",
            "--out",
            "out",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--tls-cert",
            "cert.pem",
            "--tls-key",
            "key.pem",
        ],
        p,
    );
    wait_for("the service", || listening(port));
    let out = py_args(TLS_CLIENT, &[&port.to_string(), p.join("cert.pem").to_str().unwrap()]);
    serve.kill().unwrap();
    let _ = serve.wait();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].parse::<usize>().unwrap() >= 5, "{out}");
    assert_eq!(lines[1], "plaintext refused");
}
