//! Partitioned SCS in the dataflow (`SoftCapSample`): one process against P processes on localhost (one worker
//! each), same pool, same sample. Prints each run's seconds and peak RSS, the ratio of each process's peak to the
//! single process's, and whether the samples are equal.
//!
//! `cargo bench -p flyt-operators --bench scs_partitioned -- [N] [P]`   (default N = 1e7, P = 2)
//!
//! The pool is N examples with N(0, 2.5²) scores, α = 0.15, T = N; they enter at time 0 (each worker feeds a
//! slice), then a 10k-sample shard at time 1 (the incremental step). The sample is compared through two linear
//! digests, Σ count · h(uid) over the output, so no process keeps the subset. Under `cargo test` (no `--bench`) it
//! runs once at N = 20,000.

mod peak_rss;
use peak_rss::peak_rss_mb;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use differential_dataflow::input::InputSession;
use flyt::Uid;
use flyt::sampling::Target;
use flyt_operators::{ScsCounters, SoftCapSample};
use timely::dataflow::operators::{Inspect, Probe};

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Row `i` of the pool: a uid and a N(0, 2.5²) score, from `i` alone (any worker can make any row).
fn row(i: u64) -> (Uid, f64) {
    let (a, b) = (mix(i ^ 0xA5A5), mix(i.wrapping_mul(3) ^ 0x5A5A));
    let u1 = ((a >> 11) + 1) as f64 / (1u64 << 53) as f64;
    let u2 = (b >> 11) as f64 / (1u64 << 53) as f64;
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    (Uid::from_parts(mix(i), mix(!i)), 2.5 * z)
}

/// One process of a run: prints `RESULT digest1 digest2 samples seconds_batch seconds_step peak_rss_mb`.
fn child(n: u64, process: usize, ports: &[u16]) {
    let processes = ports.len();
    let config = if processes == 1 {
        timely::Config::thread()
    } else {
        timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads: 1,
                process,
                addresses: ports.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        }
    };
    let digest = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let d = digest.clone();
    let times = timely::execute(config, move |worker| {
        let (index, peers) = (worker.index() as u64, worker.peers() as u64);
        let d = d.clone();
        let mut input: InputSession<u64, (Uid, u64), isize> = InputSession::new();
        let probe = worker.dataflow::<u64, _, _>(|scope| {
            input
                .to_collection(scope)
                .soft_cap_sample(0.15, Target::Ratio(1.0), 7, Arc::new(ScsCounters::default()))
                .inner
                .inspect(move |(u, _, c)| {
                    let c = *c as i64 as u64;
                    d[0].fetch_add(c.wrapping_mul(mix(u.high() ^ mix(u.low()))), Ordering::Relaxed);
                    d[1].fetch_add(c.wrapping_mul(mix(u.low().wrapping_add(mix(u.high())))), Ordering::Relaxed);
                    d[2].fetch_add(c, Ordering::Relaxed);
                })
                .probe()
                .0
        });
        let started = Instant::now();
        for i in (index..n).step_by(peers as usize) {
            let (u, s) = row(i);
            input.update((u, s.to_bits()), 1);
            if i % (1 << 16) < peers {
                worker.step(); // lets the sampler take what has arrived, so the input's queues stay short
            }
        }
        input.advance_to(1);
        input.flush();
        worker.step_while(|| probe.less_than(&1));
        let batch = started.elapsed().as_secs_f64();
        let started = Instant::now();
        for i in (n + index..n + 10_000).step_by(peers as usize) {
            let (u, s) = row(i);
            input.update((u, s.to_bits()), 1);
        }
        input.advance_to(2);
        input.flush();
        worker.step_while(|| probe.less_than(&2));
        (batch, started.elapsed().as_secs_f64())
    })
    .expect("timely")
    .join();
    let (batch, step) = times.into_iter().next().and_then(|r| r.ok()).expect("worker result");
    println!(
        "RESULT {:016x} {:016x} {} {batch:.3} {step:.4} {:.0}",
        digest[0].load(Ordering::Relaxed),
        digest[1].load(Ordering::Relaxed),
        digest[2].load(Ordering::Relaxed) as i64,
        peak_rss_mb()
    );
}

struct Run {
    digest: (u64, u64),
    samples: i64,
    batch: f64,
    step: f64,
    rss: f64,
}

fn parse(out: &str) -> Run {
    let line = out.lines().find(|l| l.starts_with("RESULT ")).unwrap_or_else(|| panic!("no RESULT in:\n{out}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    Run {
        digest: (u64::from_str_radix(f[1], 16).unwrap(), u64::from_str_radix(f[2], 16).unwrap()),
        samples: f[3].parse().unwrap(),
        batch: f[4].parse().unwrap(),
        step: f[5].parse().unwrap(),
        rss: f[6].parse().unwrap(),
    }
}

fn run(n: u64, processes: usize) -> Vec<Run> {
    let listeners: Vec<_> = (0..processes).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let ports: Vec<String> = listeners.iter().map(|l| l.local_addr().unwrap().port().to_string()).collect();
    drop(listeners);
    let me = std::env::current_exe().unwrap();
    let kids: Vec<_> = (0..processes)
        .map(|p| {
            Command::new(&me)
                .env("FLYT_SCS_CHILD", format!("{n} {p} {}", ports.join(",")))
                .stderr(std::process::Stdio::inherit())
                .output_async()
        })
        .collect();
    kids.into_iter().map(|k| parse(&k.wait())).collect()
}

/// `Command::output` on a thread, so the processes of a run start together.
trait OutputAsync {
    fn output_async(&mut self) -> Pending;
}
struct Pending(std::thread::JoinHandle<String>);
impl Pending {
    fn wait(self) -> String {
        self.0.join().expect("child thread")
    }
}
impl OutputAsync for Command {
    fn output_async(&mut self) -> Pending {
        let mut cmd = std::mem::replace(self, Command::new("true"));
        Pending(std::thread::spawn(move || {
            let out = cmd.output().expect("spawn the bench's child process");
            assert!(out.status.success(), "child failed: {}", String::from_utf8_lossy(&out.stdout));
            String::from_utf8_lossy(&out.stdout).into_owned()
        }))
    }
}

fn main() {
    if let Ok(spec) = std::env::var("FLYT_SCS_CHILD") {
        let f: Vec<&str> = spec.split_whitespace().collect();
        let ports: Vec<u16> = f[2].split(',').map(|p| p.parse().unwrap()).collect();
        child(f[0].parse().unwrap(), f[1].parse().unwrap(), &ports);
        return;
    }
    let bench = std::env::args().any(|a| a == "--bench");
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let n =
        if bench { args.first().and_then(|x| x.parse::<f64>().ok()).map_or(10_000_000, |x| x as u64) } else { 20_000 };
    let processes = args.get(1).and_then(|x| x.parse().ok()).unwrap_or(2usize).max(2);
    let one = run(n, 1).remove(0);
    println!(
        "1 process:   N = T = {n}: batch {:.2} s, then a 10k shard {:.1} ms; peak RSS {:.0} MB",
        one.batch,
        one.step * 1e3,
        one.rss
    );
    let many = run(n, processes);
    for (p, r) in many.iter().enumerate() {
        println!(
            "{processes} processes, process {p}: batch {:.2} s, then a 10k shard {:.1} ms; peak RSS {:.0} MB = {:.0} % of 1 process",
            r.batch,
            r.step * 1e3,
            r.rss,
            100.0 * r.rss / one.rss
        );
    }
    let digest = many.iter().fold((0u64, 0u64), |a, r| (a.0.wrapping_add(r.digest.0), a.1.wrapping_add(r.digest.1)));
    let samples: i64 = many.iter().map(|r| r.samples).sum();
    let same = digest == one.digest && samples == one.samples;
    println!(
        "samples: 1 process {} ({:016x}), {processes} processes {samples} ({:016x}): {}",
        one.samples,
        one.digest.0,
        digest.0,
        if same { "equal" } else { "DIFFERENT" }
    );
    assert!(same, "the partitioned sample differs from the single process's");
    assert_eq!(one.samples, n as i64 + 10_000, "T = N after the shard");
}
