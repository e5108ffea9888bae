//! One test per bug that broke something, named after what broke.

mod common;

use common::RawTar;
use flyt::Uid;
use flyt::sampling::{IncrementalScs, Target, scs};

/// `IncrementalScs::remove` freed a slot for reuse while the heaps still held the removed example's firings;
/// an example inserted into that slot then passed the stale first firing off as its own, and the counts
/// drifted from the batch sampler (seen as `flyt curate` disagreeing with a batch run after a shard was
/// replaced).
#[test]
fn incremental_scs_reused_slot_took_a_stale_firing() {
    let score = |i: u128| ((i * 7919) % 101) as f64 / 20.0;
    let old: Vec<(Uid, f64)> = (0..3000u128).map(|i| (Uid::from_u128(i), score(i))).collect();
    let new: Vec<(Uid, f64)> = (10_000..10_800u128).map(|i| (Uid::from_u128(i), score(i * 3))).collect();
    let mut inc = IncrementalScs::new(0.15, Target::Ratio(1.0), 5).unwrap();
    inc.insert(&old).unwrap();
    let gone: Vec<Uid> = old[1000..1900].iter().map(|p| p.0).collect();
    assert_eq!(inc.remove(&gone), gone.len());
    inc.insert(&new).unwrap();
    let pool: Vec<(Uid, f64)> = old[..1000].iter().chain(&old[1900..]).chain(&new).copied().collect();
    let want = scs(&pool, 0.15, Target::Ratio(1.0).for_pool(pool.len()), 5).unwrap();
    let differ = pool.iter().zip(&want).filter(|((u, _), c)| inc.count(*u) != **c).count();
    assert_eq!(differ, 0, "{differ} of {} counts differ from the batch sampler", pool.len());
}

// ---- issue 19: a fault sweep's findings -------------------------------------------------------------------

fn tar_header(name: &str, size: u64, typeflag: u8) -> [u8; 512] {
    RawTar::header(name.as_bytes(), size, typeflag)
}

fn tar_entry(out: &mut Vec<u8>, name: &str, data: &[u8], typeflag: u8) {
    let mut t = RawTar { bytes: std::mem::take(out) };
    t.raw_entry(name.as_bytes(), typeflag, data);
    *out = t.bytes;
}

const PNG_1X1: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 0x0d, 0x49, 0x48, 0x44, 0x52, 0, 0, 0, 1, 0, 0, 0, 1, 8,
    2, 0, 0, 0, 0x90, 0x77, 0x53, 0xde, 0, 0, 0, 0x0c, 0x49, 0x44, 0x41, 0x54, 0x08, 0xd7, 0x63, 0xf8, 0xcf, 0xc0, 0,
    0, 0x03, 0x01, 0x01, 0x00, 0x18, 0xdd, 0x8d, 0xb0, 0, 0, 0, 0, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

fn sample(out: &mut Vec<u8>, key: &str) {
    tar_entry(out, &format!("{key}.png"), PNG_1X1, b'0');
    tar_entry(out, &format!("{key}.txt"), format!("caption of {key}").as_bytes(), b'0');
}

fn read_all(bytes: Vec<u8>) -> (Vec<String>, Vec<flyt::Rejected>, flyt::ShardStats) {
    let mut r = flyt::ShardReader::from_reader(
        Box::new(std::io::Cursor::new(bytes)),
        std::path::Path::new("t.tar"),
        "t",
        flyt::ReaderConfig::default(),
    );
    let (mut keys, mut rejects) = (Vec::new(), Vec::new());
    for rec in r.by_ref() {
        match rec.expect("no infrastructure error") {
            flyt::Record::Sample(s) => keys.push(s.key.clone()),
            flyt::Record::Rejected(x) => rejects.push(x),
        }
    }
    (keys, rejects, r.stats().clone())
}

/// Entries of type S (GNU sparse, with an extension header), M, V and an unknown type carrying data were read
/// as zero-length: the reader lost the tar's alignment and the rest of the shard (`corrupt_tar`), where
/// Python's `tarfile` skips their data by the header's size and reads on.
#[test]
fn tar_sparse_multivolume_label_and_unknown_types_lost_alignment() {
    let mut t = Vec::new();
    sample(&mut t, "a");
    // GNU sparse with isextended set: one extension block follows the header, then the data.
    let mut h = tar_header("big.sparse", 1000, b'S');
    h[482] = 1;
    RawTar::checksum(&mut h);
    t.extend_from_slice(&h);
    t.extend_from_slice(&[0u8; 512]); // the extension block (its isextended byte 0)
    t.extend_from_slice(&vec![7u8; 1024]); // 1000 bytes of data, padded
    tar_entry(&mut t, "vol.part", &[9u8; 700], b'M');
    tar_entry(&mut t, "label", &[], b'V');
    tar_entry(&mut t, "x.custom", &[1u8; 3000], b'Z');
    sample(&mut t, "b");
    t.extend_from_slice(&[0u8; 1024]);
    let (keys, rejects, stats) = read_all(t);
    assert_eq!(keys, vec!["a", "b"], "the samples after the odd entries are read: {rejects:?}");
    assert_eq!(rejects.len(), 4, "{rejects:?}");
    assert!(rejects.iter().all(|r| r.reason == flyt::RejectReason::NotASampleMember), "{rejects:?}");
    assert!(rejects[0].detail.contains("GNU sparse"), "{}", rejects[0].detail);
    assert!(rejects[3].detail.contains("3000 data bytes were skipped"), "{}", rejects[3].detail);
    assert_eq!(stats.members, 8);
    assert!(stats.reconciles(), "{stats:?}");
}

/// Directory entries were not counted as members, so a shard's member count disagreed with `tarfile`'s.
#[test]
fn tar_directory_entries_were_not_members() {
    let mut t = Vec::new();
    tar_entry(&mut t, "d/", &[], b'5');
    sample(&mut t, "d/a");
    t.extend_from_slice(&[0u8; 1024]);
    let (keys, rejects, stats) = read_all(t);
    assert_eq!(keys, vec!["d/a"]);
    assert_eq!((stats.members, rejects.len()), (3, 1));
    assert!(rejects[0].detail.contains("directory"), "{rejects:?}");
    assert!(stats.reconciles());
}

/// A tar cut between two samples lost the last intact sample before the cut (rejected with the truncation).
#[test]
fn tar_truncation_rejected_the_last_intact_sample() {
    let mut t = Vec::new();
    sample(&mut t, "a");
    sample(&mut t, "b");
    let mut cut = t.clone(); // no end-of-archive marker: the writer stopped after b
    let (keys, rejects, stats) = read_all(cut.clone());
    assert_eq!(keys, vec!["a", "b"], "{rejects:?}");
    assert_eq!(rejects.len(), 1);
    assert_eq!((rejects[0].reason, rejects[0].members), (flyt::RejectReason::TruncatedTar, 0));
    assert!(stats.reconciles());
    // Cut inside the next header: b is still whole.
    cut.extend_from_slice(&tar_header("c.png", 10, b'0')[..200]);
    let (keys, _, stats) = read_all(cut);
    assert_eq!(keys, vec!["a", "b"]);
    assert!(stats.reconciles());
    // Cut after c's image, before its caption: c may have lost members to the cut, so it is rejected.
    let mut t = Vec::new();
    sample(&mut t, "a");
    tar_entry(&mut t, "c.png", PNG_1X1, b'0');
    let (keys, rejects, stats) = read_all(t);
    assert_eq!(keys, vec!["a"]);
    assert_eq!(
        (rejects[0].key.as_str(), rejects[0].reason, rejects[0].members),
        ("c", flyt::RejectReason::TruncatedTar, 1)
    );
    assert!(stats.reconciles());
    // Cut inside b's caption: b is lost, a is kept.
    let mut t = Vec::new();
    sample(&mut t, "a");
    tar_entry(&mut t, "b.png", PNG_1X1, b'0');
    t.extend_from_slice(&tar_header("b.txt", 100, b'0'));
    t.extend_from_slice(b"only part");
    let (keys, rejects, stats) = read_all(t);
    assert_eq!(keys, vec!["a"]);
    assert_eq!((rejects[0].key.as_str(), rejects[0].members), ("b", 2));
    assert!(stats.reconciles());
}

/// Member names with a `..` component, an absolute path or a NUL byte made keys that point outside any
/// directory a consumer unpacks samples into; they are rejected with the reason.
#[test]
fn tar_keys_with_dotdot_absolute_or_nul_were_accepted() {
    let mut t = Vec::new();
    sample(&mut t, "../evil");
    sample(&mut t, "/abs/x");
    // NUL only fits a name through a pax record.
    let rec = b"path=nul\0x.png\n";
    let len = rec.len() + 3;
    let pax = format!("{len} {}", String::from_utf8_lossy(rec));
    tar_entry(&mut t, "././@PaxHeader", pax.as_bytes(), b'x');
    t.extend_from_slice(&tar_header("placeholder.png", PNG_1X1.len() as u64, b'0'));
    t.extend_from_slice(PNG_1X1);
    t.resize(t.len().div_ceil(512) * 512, 0);
    sample(&mut t, "ok");
    t.extend_from_slice(&[0u8; 1024]);
    let (keys, rejects, stats) = read_all(t);
    assert_eq!(keys, vec!["ok"], "{rejects:?}");
    let why: Vec<&str> = rejects.iter().map(|r| r.detail.as_str()).collect();
    assert!(why.iter().filter(|d| d.contains("'..' component")).count() == 2, "{why:?}");
    assert!(why.iter().filter(|d| d.contains("absolute path")).count() == 2, "{why:?}");
    assert!(why.iter().any(|d| d.contains("NUL")), "{why:?}");
    assert!(stats.reconciles());
}

/// The decompression-bomb check counted pixels: a 1.3 MB PNG of 13000² RGBA at 16 bits passed it and decoded
/// to about 1.45 GB. Decoded bytes are bounded per image, before decoding.
#[test]
fn decoding_budget_counted_pixels_not_bytes() {
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    png.extend_from_slice(&13000u32.to_be_bytes());
    png.extend_from_slice(&13000u32.to_be_bytes());
    png.extend_from_slice(&[16, 6, 0, 0, 0, 0, 0, 0, 0]);
    let info = flyt::sniff_image(&png).unwrap();
    assert_eq!(info.decoded_bytes(), 13000 * 13000 * 8);
    let started = std::time::Instant::now();
    let err = flyt::clip::preprocess::decode_rgb(&png).unwrap_err();
    assert!(err.contains("decoding needs") && err.contains("16 bits"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(1), "refused before decoding");
    // The same pixel count at 8-bit RGB is within the per-image bound (the budget is about bytes).
    let mut rgb = png.clone();
    rgb[24] = 8;
    rgb[25] = 2;
    assert!(flyt::sniff_image(&rgb).unwrap().decoded_bytes() * 2 <= flyt::clip::MAX_DECODED_BYTES);
}

/// Decoders on many threads together held as many decoded bytes as there were threads; a shared budget bounds
/// them by bytes.
#[test]
fn decode_pool_held_unbounded_bytes() {
    let budget = std::sync::Arc::new(flyt::clip::DecodeBudget::new(1000));
    std::thread::scope(|s| {
        for i in 0..8u64 {
            let b = budget.clone();
            s.spawn(move || {
                for _ in 0..50 {
                    let _r = b.reserve(300 + i * 10);
                    std::thread::yield_now();
                }
            });
        }
    });
    assert!(budget.peak() <= 1000, "peak {} over the budget", budget.peak());
    assert!(budget.peak() >= 600, "two reservations fit together: peak {}", budget.peak());
    assert_eq!(budget.held(), 0);
}

/// A FIFO named like a shard blocked the reader forever on open, and `/dev/zero` behind a shard's name spun a
/// worker hashing it; only regular files are read, checked on the opened descriptor without blocking.
#[test]
fn fifo_or_device_behind_a_shard_name_hung_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.tar");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let zero = dir.path().join("z.tar");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let started = std::time::Instant::now();
    let e = flyt::ShardReader::open(&fifo, flyt::ReaderConfig::default()).err().expect("a FIFO is refused");
    assert!(e.to_string().contains("a FIFO, not a regular file"), "{e}");
    let e = flyt::ShardReader::open(&zero, flyt::ReaderConfig::default()).err().expect("a device is refused");
    assert!(e.to_string().contains("character device"), "{e}");
    assert!(flyt::file_sha256(&zero).is_err());
    assert!(flyt::file_sha256(&fifo).is_err());
    assert!(flyt::check_regular(&fifo).is_err());
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

/// Two runs on one output directory used the same `.NAME.tmp` and failed on each other's temporary files.
#[test]
fn concurrent_writers_shared_temporary_names() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("manifest.json");
    std::thread::scope(|s| {
        for i in 0..8 {
            let target = target.clone();
            s.spawn(move || {
                for j in 0..50 {
                    flyt::write_atomic(&target, format!("{i}-{j}").as_bytes())
                        .expect("no writer trips on another's temporary");
                }
            });
        }
    });
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left.len(), 1, "no temporary left behind: {left:?}");
}

/// Two runs on one output directory ran at once and corrupted each other; the second is refused, naming the
/// holder.
#[test]
fn two_runs_on_one_out_were_not_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let layout = flyt::curation::Layout::new(dir.path());
    let held = layout.lock(0).unwrap();
    let err = layout.lock(0).unwrap_err().to_string();
    assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
    drop(held);
    layout.lock(0).expect("free again once the holder is gone");
}
