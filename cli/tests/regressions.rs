//! `flyt curate` under faults, one test per failure a fault sweep found (issue 19), named after what broke: a
//! full disk, special files among the shards, a stop request during a read, two runs on one output, damaged
//! score tables, and a restart that published less than was on disk.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{flyt, manifest, ok, spawn, subset};
use flyt::synth::SynthSidecars;

fn pool(dir: &Path, shards: usize, rows: usize, seed: u64) {
    SynthSidecars { shards, rows_per_shard: rows, dim: 16, seed, ..Default::default() }.write(dir).unwrap();
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn records(out: &Path) -> usize {
    std::fs::read_dir(out.join("shards"))
        .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".json")).count())
        .unwrap_or(0)
}

fn sigterm(c: &Child) {
    // SAFETY: kill(2) on a child's pid; no memory is involved.
    unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
}

fn wait_timeout(mut c: Child, limit: Duration) -> Output {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if c.try_wait().unwrap().is_some() {
            return c.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let o = c.wait_with_output().unwrap();
    panic!("flyt did not end within {limit:?}:\n{}", stderr(&o));
}

/// A small filesystem for OUT. A tmpfs of `bytes` mounted on a fresh directory where this test may mount (CI
/// runs as root on a machine that allows it); elsewhere the fallback is a per-file size limit
/// (`RLIMIT_FSIZE`, with SIGXFSZ ignored so writes fail with EFBIG), which `flyt` must treat the same way.
struct SmallDisk {
    dir: PathBuf,
    mounted: bool,
}

impl SmallDisk {
    fn new(at: &Path, bytes: u64) -> SmallDisk {
        std::fs::create_dir_all(at).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("mount is not allowed here: falling back to RLIMIT_FSIZE (a per-file size limit)");
        }
        SmallDisk { dir: at.to_path_buf(), mounted }
    }

    /// Fills the filesystem to `free` bytes left (with a ballast file).
    fn fill(&self, free: u64) {
        if !self.mounted {
            return;
        }
        let ballast = self.dir.join("ballast");
        let _ = std::fs::remove_file(&ballast);
        // SAFETY: statvfs fills the struct it is given for a NUL-terminated path.
        let avail = unsafe {
            let c = std::ffi::CString::new(self.dir.to_str().unwrap()).unwrap();
            let mut st: libc::statvfs = std::mem::zeroed();
            assert_eq!(libc::statvfs(c.as_ptr(), &mut st), 0);
            st.f_bavail as u64 * st.f_frsize as u64
        };
        std::fs::write(&ballast, vec![1u8; avail.saturating_sub(free) as usize]).unwrap();
    }

    fn free_up(&self) {
        let _ = std::fs::remove_file(self.dir.join("ballast"));
    }

    /// `flyt ARGS` with the limit applied when the filesystem could not be mounted.
    fn command(&self, args: &[&str], cwd: &Path) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_flyt"));
        c.args(args).current_dir(cwd).stdout(Stdio::piped()).stderr(Stdio::piped());
        if !self.mounted {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec only async-signal-safe calls (signal, setrlimit) are made.
            unsafe {
                c.pre_exec(|| {
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    let lim = libc::rlimit { rlim_cur: 4096, rlim_max: 4096 };
                    libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
                    Ok(())
                });
            }
        }
        c
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// `flyt curate` with OUT on a nearly full filesystem exited 0 with most shards uncommitted, the first (empty)
/// subset on disk and a summary read from a stale manifest. Any failed write fails the run, naming the error.
#[test]
fn a_full_disk_exited_0() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    pool(&p.join("pool"), 40, 200, 1);
    for free in [8u64 << 10, 64 << 10, 448 << 10] {
        let disk = SmallDisk::new(&p.join(format!("disk{free}")), 4 << 20);
        disk.fill(free);
        let out = disk.dir.join("out");
        let o = disk.command(&["curate", "--shards", "pool", "--out", out.to_str().unwrap()], p).output().unwrap();
        let err = stderr(&o);
        assert!(
            !o.status.success(),
            "{free} bytes free: exited 0 with {} of 40 shards committed:\n{err}",
            records(&out)
        );
        assert!(err.contains("No space left on device") || err.contains("File too large"), "the error is named: {err}");
        assert!(records(&out) < 40, "the disk was full: some shard could not commit");
    }
}

/// With `--follow`, shards that failed for lack of space were tried again only at a restart; now they are
/// tried again after a pause, and commit once space is back.
#[test]
fn a_full_disk_while_following_was_retried_only_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    pool(&p.join("pool"), 12, 200, 2);
    let disk = SmallDisk::new(&p.join("disk"), 4 << 20);
    if !disk.mounted {
        eprintln!("skipping the space-comes-back half: it needs a filesystem whose space can be freed");
        return;
    }
    disk.fill(48 << 10);
    let out = disk.dir.join("out");
    let child = disk
        .command(&["curate", "--shards", "pool", "--out", out.to_str().unwrap(), "--follow", "--poll-ms", "100"], p)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let before = records(&out);
    assert!(before < 12, "the disk should have been too full for every shard ({before} committed)");
    disk.free_up();
    let until = Instant::now() + Duration::from_secs(90);
    let done = || {
        std::fs::read(out.join("manifest.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|m| {
                m["shards"].as_array().map(|a| a.len()) == Some(12) && m["failed"] == serde_json::json!([])
            })
    };
    while !done() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(200));
    }
    sigterm(&child);
    let o = wait_timeout(child, Duration::from_secs(30));
    assert!(done(), "every shard committed once space came back ({} records):\n{}", records(&out), stderr(&o));
    assert!(o.status.success(), "{}", stderr(&o));
    // The subset equals a run on a roomy disk.
    ok(flyt(&["curate", "--shards", "pool", "--out", "roomy"], p));
    assert_eq!(subset(&out), subset(&p.join("roomy")));
}

/// A FIFO named `fifo.tar` blocked `flyt curate` forever, and `z.tar -> /dev/zero` spun a worker at 100 %;
/// both are left out of the input (only regular files are shards) with a warning, and the run completes.
#[test]
fn a_fifo_or_device_among_the_shards_hung_curate() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    pool(&p.join("pool"), 3, 50, 3);
    let c = std::ffi::CString::new(p.join("pool/fifo.tar").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    std::os::unix::fs::symlink("/dev/zero", p.join("pool/z.tar")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", p.join("pool/00000009.npz")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flyt"));
    cmd.args(["curate", "--shards", "pool", "--out", "out"]).env("FLYT_LOG", "warn").current_dir(p);
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let o = wait_timeout(child, Duration::from_secs(60));
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(manifest(&p.join("out"))["shards"].as_array().unwrap().len(), 3);
    assert!(err.contains("a FIFO, not a regular file"), "{err}");
    assert!(err.contains("character device"), "{err}");
}

/// SIGTERM during a long read was ignored until the read ended (608 s for a FIFO): a stop request now
/// interrupts reads in flight; the shard stays uncommitted and is listed as interrupted, and a batch run
/// that did not finish exits non-zero.
#[test]
fn sigterm_did_not_interrupt_a_read_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    common::tiny_clip(&p.join("clip"));
    std::fs::create_dir_all(p.join("pool")).unwrap();
    // A tar of 200 members of 1 GiB each, all holes: reading it takes far longer than the test waits.
    let big = p.join("pool/big.tar");
    let f = std::fs::File::create(&big).unwrap();
    {
        use std::os::unix::fs::FileExt;
        let gib = 1u64 << 30;
        for i in 0..200u64 {
            let mut h = [0u8; 512];
            let name = format!("k{i}.bin");
            h[..name.len()].copy_from_slice(name.as_bytes());
            h[100..108].copy_from_slice(b"0000644\0");
            h[124..136].copy_from_slice(format!("{gib:011o}\0").as_bytes());
            h[156] = b'0';
            h[257..263].copy_from_slice(b"ustar\0");
            h[148..156].copy_from_slice(b"        ");
            let sum: u64 = h.iter().map(|&b| b as u64).sum();
            h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            f.write_all_at(&h, i * (gib + 512)).unwrap();
        }
        f.set_len(200 * (gib + 512) + 1024).unwrap();
    }
    let child = spawn(&["curate", "--shards", "pool", "--out", "out", "--model", "clip"], p);
    std::thread::sleep(Duration::from_secs(3));
    let sent = Instant::now();
    sigterm(&child);
    let o = wait_timeout(child, Duration::from_secs(30));
    let took = sent.elapsed();
    let err = stderr(&o);
    assert!(took < Duration::from_secs(15), "SIGTERM took {took:?} to end the run");
    assert!(!o.status.success(), "a batch run stopped before its work was done exits non-zero");
    assert!(err.contains("interrupted"), "{err}");
    let m = manifest(&p.join("out"));
    assert_eq!(m["interrupted"], serde_json::json!(["big"]), "{m}");
    assert_eq!(records(&p.join("out")), 0, "the interrupted shard is not committed");
}

/// Two `flyt curate` runs on one OUT failed on each other's temporary files and lost shards; the second is
/// refused with a message naming the holder, and the first finishes as if alone.
#[test]
fn two_runs_on_one_out_corrupted_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    pool(&p.join("pool"), 6, 200, 4);
    let first = spawn(&["curate", "--shards", "pool", "--out", "out", "--follow", "--poll-ms", "100"], p);
    let until = Instant::now() + Duration::from_secs(30);
    while !p.join("out/.lock-0").exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let second = flyt(&["curate", "--shards", "pool", "--out", "out"], p);
    let err = stderr(&second);
    assert!(!second.status.success());
    assert!(err.contains("in use by another flyt run") && err.contains(&format!("pid {}", first.id())), "{err}");
    sigterm(&first);
    let o = wait_timeout(first, Duration::from_secs(60));
    assert!(o.status.success(), "{}", stderr(&o));
    ok(flyt(&["curate", "--shards", "pool", "--out", "alone"], p));
    assert_eq!(subset(&p.join("out")), subset(&p.join("alone")));
}

/// On a restart, a score table with values changed, rows dropped, or missing was used as it was (or failed
/// the shard on every restart): each table's digest and row count are in its commit record, and a table that
/// fails the check is rebuilt from the shard's inputs.
#[test]
fn damaged_score_tables_gave_a_silently_different_subset() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    pool(&p.join("pool"), 5, 100, 5);
    ok(flyt(&["curate", "--shards", "pool", "--out", "out"], p));
    let want = subset(&p.join("out"));
    let table = |n: &str| p.join(format!("out/shards/{n}.scores.parquet"));
    // Values changed: every score of one shard set to 10.
    let t = flyt::read_score_table(table("00000001"), &["clip_score"]).unwrap();
    let tens = vec![10.0f32; t.ids.len()];
    flyt::write_score_table(table("00000001"), &t.ids, &[], &[("clip_score", &tens)]).unwrap();
    // Rows dropped.
    let t = flyt::read_score_table(table("00000002"), &["clip_score"]).unwrap();
    flyt::write_score_table(table("00000002"), &t.ids[10..], &[], &[("clip_score", &t.columns[0][10..])]).unwrap();
    // Missing, and cut short (unreadable).
    std::fs::remove_file(table("00000003")).unwrap();
    let bytes = std::fs::read(table("00000004")).unwrap();
    std::fs::write(table("00000004"), &bytes[..bytes.len() / 2]).unwrap();
    ok(flyt(&["curate", "--shards", "pool", "--out", "out"], p));
    assert_eq!(subset(&p.join("out")), want, "the same subset as before the damage");
    let m = manifest(&p.join("out"));
    let replayed: Vec<(String, bool)> = m["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s["replayed"].as_bool().unwrap()))
        .collect();
    let rebuilt: Vec<&str> = replayed.iter().filter(|(_, r)| !r).map(|(n, _)| n.as_str()).collect();
    assert_eq!(rebuilt, vec!["00000001", "00000002", "00000003", "00000004"], "{replayed:?}");
    // And the next restart replays every shard.
    ok(flyt(&["curate", "--shards", "pool", "--out", "out"], p));
    let m = manifest(&p.join("out"));
    assert!(m["shards"].as_array().unwrap().iter().all(|s| s["replayed"] == true), "{m}");
}

/// Restarting over a complete OUT published a 0-uid, `complete=false` subset first (its version going
/// backwards) for some milliseconds; a kill then left it there. A restart now publishes nothing until the
/// earlier run's shards are back, and versions only grow.
#[test]
fn a_restart_published_an_empty_subset_first() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    pool(&p.join("pool"), 30, 300, 6);
    ok(flyt(&["curate", "--shards", "pool", "--out", "out"], p));
    let first = manifest(&p.join("out"));
    let (uids, version) = (first["subset"]["uids"].as_u64().unwrap(), first["version"].as_u64().unwrap());
    assert!(uids > 0);
    let watch = |out: PathBuf, stop: std::sync::Arc<std::sync::atomic::AtomicBool>| {
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(m) = std::fs::read(out.join("manifest.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                {
                    seen.push((m["version"].as_u64().unwrap_or(0), m["subset"]["uids"].as_u64().unwrap_or(0)));
                }
                std::thread::sleep(Duration::from_micros(300));
            }
            seen
        })
    };
    for args in [
        vec!["curate", "--shards", "pool", "--out", "out"],
        vec!["curate", "--shards", "pool", "--out", "out", "--follow", "--idle-exit", "1"],
    ] {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = watch(p.join("out"), stop.clone());
        ok(flyt(&args, p));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let seen = seen.join().unwrap();
        assert!(seen.iter().all(|(_, u)| *u == uids), "a restart published another subset: {seen:?}");
        assert!(seen.iter().all(|(v, _)| *v >= version), "versions went backwards: {seen:?}");
        assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "versions went backwards: {seen:?}");
    }
    assert!(manifest(&p.join("out"))["version"].as_u64().unwrap() > version);
}
