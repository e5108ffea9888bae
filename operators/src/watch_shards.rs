//! `WatchShards`: the curation graph's source. It lists the input directories, decides when a shard has
//! arrived, and turns each arrival into a job — read it, re-score it, replay its committed rows, or retract a
//! replaced version — one timestamp per shard.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flyt::curation::{FileId, Layout, ShardRecord};
use flyt::{Uid, dir_shows_marker_layout, shows_marker_layout};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, Stream};

use crate::{Counters, PoolRow, pool_rows};

/// When a shard in a watched directory counts as arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrival {
    /// `marker` in a directory that shows img2dataset's layout (its `_tmp/` folder while it runs, or a
    /// `<name>_stats.json` beside a `<name>.tar`), `rename` elsewhere. img2dataset writes each `NNNNN.tar` under its final name and marks
    /// it complete with `NNNNN_stats.json`; a directory that shows the layout once keeps it for the run.
    Auto,
    /// As soon as it is visible under its final name: writers write to a temporary name (a leading `.`, or
    /// `.tmp` / `.part` / `.incomplete` at the end) and rename it into place.
    Rename,
    /// Only once its img2dataset `<stem>_stats.json` or a `<stem>.done` marker exists.
    Marker,
}

/// Where embeddings come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingSource {
    /// DataComp sidecars (`<stem>.parquet` + `<stem>.npz`) when a shard has them, else the CLIP model.
    Auto,
    /// Only sidecars: a shard waits for both files; the tar is never read.
    Sidecar,
    /// Always embed the tar's images and captions with the CLIP model.
    Model,
}

macro_rules! names {
    ($t:ty, $what:literal, $($v:ident = $n:literal),+) => {
        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($n => Ok(Self::$v),)+
                    _ => Err(format!(concat!($what, " must be one of {}, got {:?}"), [$($n),+].join(", "), s)),
                }
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(match self { $(Self::$v => $n,)+ })
            }
        }
    };
}
names!(Arrival, "arrival", Auto = "auto", Rename = "rename", Marker = "marker");
names!(EmbeddingSource, "embeddings", Auto = "auto", Sidecar = "sidecar", Model = "model");

/// How a shard's embeddings are obtained.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Via {
    /// Decode the tar and embed with the CLIP model.
    Model {
        /// The tar.
        tar: PathBuf,
    },
    /// Read only a DataComp metadata parquet (captions, sizes): for methods that need no embeddings, in batch
    /// jobs over pools without `.npz` files.
    Metadata {
        /// `<stem>.parquet`.
        parquet: PathBuf,
    },
    /// Read a DataComp sidecar pair (the shard's own, or embeddings this pipeline stored).
    Sidecar {
        /// `<stem>.parquet`.
        parquet: PathBuf,
        /// `<stem>.npz`.
        npz: PathBuf,
        /// Whether these are embeddings stored by an earlier run (a re-score).
        stored: bool,
    },
}

/// A unit of work, routed to a worker by its name.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Job {
    /// Read, embed, score and commit a shard.
    Shard {
        /// Its name.
        name: String,
        /// Its input files (size and mtime; digests are taken at commit).
        inputs: Vec<FileId>,
        /// Where embeddings come from.
        via: Via,
    },
    /// Re-enter a committed shard's rows from its score table.
    Replay {
        /// Its name.
        name: String,
    },
    /// Take back a replaced shard's rows (as they were committed).
    Retract {
        /// Its name.
        name: String,
        /// The rows.
        rows: Vec<(Uid, PoolRow)>,
    },
    /// Read an external score file.
    Scores {
        /// The file.
        path: PathBuf,
    },
}

impl Job {
    /// The routing key.
    pub fn route(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        match self {
            Job::Shard { name, .. } | Job::Replay { name } | Job::Retract { name, .. } => name.hash(&mut h),
            Job::Scores { path } => path.hash(&mut h),
        }
        h.finish()
    }
}

/// A shard found in the input: its name and the files it has so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unit {
    /// The name (file name without `.tar`/`.tar.gz`/`.tgz`/`.parquet`).
    pub name: String,
    /// The tar.
    pub tar: Option<PathBuf>,
    /// `<stem>.parquet`.
    pub parquet: Option<PathBuf>,
    /// `<stem>.npz`.
    pub npz: Option<PathBuf>,
    /// A completion marker (`<stem>_stats.json`, `<stem>.done`, `<tar>.done`).
    pub marker: bool,
    /// Its directory shows a writer that marks completion (img2dataset's `_tmp/`, or a `<name>_stats.json` beside a `<name>.tar`):
    /// under `--arrival auto` it waits for its marker.
    pub marked_dir: bool,
}

fn is_temporary(name: &str) -> bool {
    name.starts_with('.') || [".tmp", ".part", ".incomplete", ".partial"].iter().any(|s| name.ends_with(s))
}

fn tar_stem(name: &str) -> Option<&str> {
    [".tar.gz", ".tgz", ".tar"].iter().find_map(|s| name.strip_suffix(s))
}

/// When a shard in a directory counts as arrived under `arrival`, given whether the directory shows
/// img2dataset's layout, in words.
pub fn arrival_rule(arrival: Arrival, marked: bool) -> &'static str {
    match (arrival, marked) {
        (Arrival::Marker, _) => "--arrival marker: a shard is read once its <name>_stats.json or <name>.done exists",
        (Arrival::Rename, _) => {
            "--arrival rename: a shard is read as soon as it is visible under its final name (writers must rename it into place)"
        }
        (Arrival::Auto, true) => {
            "--arrival auto: img2dataset's layout (_tmp/, or <name>_stats.json beside <name>.tar): a shard is read once its <name>_stats.json exists"
        }
        (Arrival::Auto, false) => {
            "--arrival auto: no completion markers (yet): a shard is read as soon as it is visible under its final name, until img2dataset's _tmp/ or a <name>_stats.json beside its tar appears (a writer that writes in place without them needs --arrival marker)"
        }
    }
}

/// Groups a directory listing (or explicit files) into units by name. Only regular files (a symlink counts by
/// what it points at) take part: a FIFO, a device, a socket or a directory under a shard's name is left out
/// (checked by `stat`, never by opening it, so a FIFO cannot block the listing) and recorded in `refused` with
/// the reason.
/// `marked` holds the directories that show img2dataset's layout ([`shows_marker_layout`]); directories found
/// to show it are added (a directory keeps the layout once shown), and units in them get `marked_dir`.
pub fn list_units(
    dirs: &[PathBuf],
    files: &[PathBuf],
    refused: &mut BTreeMap<PathBuf, String>,
    marked: &mut std::collections::BTreeSet<PathBuf>,
) -> BTreeMap<String, Unit> {
    let mut units: BTreeMap<String, Unit> = BTreeMap::new();
    // Files named one by one follow their directory's layout too.
    let mut parents: BTreeMap<PathBuf, bool> = BTreeMap::new();
    let mut paths: Vec<(PathBuf, bool, bool)> = Vec::new();
    for f in files {
        let parent = f.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        let m = *parents.entry(parent.clone()).or_insert_with(|| {
            if dir_shows_marker_layout(&parent) {
                marked.insert(parent.clone());
            }
            marked.contains(&parent)
        });
        paths.push((f.clone(), false, m));
    }
    for d in dirs {
        match std::fs::read_dir(d) {
            Ok(rd) => {
                // The listing's file type spares a stat for plain files; links are followed below.
                let entries: Vec<(PathBuf, bool, bool)> = rd
                    .flatten()
                    .map(|e| {
                        let t = e.file_type().ok();
                        (e.path(), t.is_some_and(|t| t.is_file()), t.is_some_and(|t| t.is_dir()))
                    })
                    .collect();
                let names: Vec<(String, bool)> = entries
                    .iter()
                    .filter_map(|(p, _, dir)| p.file_name().map(|n| (n.to_string_lossy().into_owned(), *dir)))
                    .collect();
                if shows_marker_layout(&names) {
                    marked.insert(d.clone());
                }
                let m = marked.contains(d);
                paths.extend(entries.into_iter().map(|(p, plain, _)| (p, plain, m)));
            }
            Err(e) => tracing::warn!(dir = %d.display(), error = %e, "cannot list the shard directory"),
        }
    }
    for (p, plain, in_marked) in paths {
        let Some(name) = p.file_name().map(|n| n.to_string_lossy().into_owned()) else { continue };
        if is_temporary(&name) {
            continue;
        }
        let relevant =
            tar_stem(&name).is_some() || [".parquet", ".npz", "_stats.json", ".done"].iter().any(|s| name.ends_with(s));
        if relevant
            && !plain
            && let Err(why) = flyt::check_regular(&p)
        {
            refused.insert(p, why);
            continue;
        }
        let (stem, slot) = if let Some(s) = tar_stem(&name) {
            (s.to_string(), 0)
        } else if let Some(s) = name.strip_suffix(".parquet") {
            (s.to_string(), 1)
        } else if let Some(s) = name.strip_suffix(".npz") {
            (s.to_string(), 2)
        } else if let Some(s) = name.strip_suffix("_stats.json") {
            (s.to_string(), 3)
        } else if let Some(s) = name.strip_suffix(".done") {
            (tar_stem(s).unwrap_or(s).to_string(), 3)
        } else {
            continue;
        };
        let u = units.entry(stem.clone()).or_insert_with(|| Unit { name: stem, ..Default::default() });
        u.marked_dir |= in_marked;
        match slot {
            0 => u.tar = Some(p),
            1 => u.parquet = Some(p),
            2 => u.npz = Some(p),
            _ => u.marker = true,
        }
    }
    units
}

/// What a committed shard's rows depend on, to decide whether they still hold: the input rules, the embeddings'
/// origin, and the scoring methods with the identity of their inputs.
#[derive(Clone, Debug)]
pub struct Identities {
    /// `[input] embeddings`.
    pub embeddings: EmbeddingSource,
    /// `[input] arrival`.
    pub arrival: Arrival,
    /// The CLIP model's identity (`clip:<sha256>`), if a model is configured.
    pub clip: Option<String>,
    /// The sidecar prefix asked for (None: found in each file).
    pub prefix: Option<String>,
    /// The score columns, in the pipeline's order.
    pub columns: Vec<String>,
    /// Per scoring method with inputs, their identity (`flyt`: the head's digest; `neg_clip_loss`: its
    /// parameters; `norm_sim`, `image_based`, `text_based`: digests of their files).
    pub methods: BTreeMap<String, String>,
    /// Exact dedup runs: a shard committed without content digests is read again.
    pub content: bool,
}

impl Identities {
    /// The `clip` identity a shard read this way has.
    pub fn clip_identity(&self, via: &Via) -> String {
        match via {
            Via::Model { .. } | Via::Sidecar { stored: true, .. } => self.clip.clone().unwrap_or_default(),
            Via::Sidecar { stored: false, .. } | Via::Metadata { .. } => {
                format!("sidecar:{}", self.prefix.as_deref().unwrap_or("auto"))
            }
        }
    }

    /// What a commit record's `models` holds for a shard read this way: `clip` and the methods' identities.
    pub fn record_models(&self, via: &Via) -> BTreeMap<String, String> {
        let mut m = self.methods.clone();
        m.insert("clip".into(), self.clip_identity(via));
        m
    }

    /// Whether a committed shard's columns were computed by the methods configured now.
    pub fn same_scoring(&self, record: &ShardRecord) -> bool {
        let theirs: BTreeMap<&String, &String> = record.models.iter().filter(|(k, _)| *k != "clip").collect();
        let ours: BTreeMap<&String, &String> = self.methods.iter().collect();
        record.columns == self.columns && theirs == ours
    }
}

/// What a shard that has not arrived waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Waiting {
    /// Its completion marker (`<name>_stats.json` or `<name>.done`).
    Marker,
    /// Its DataComp sidecars (`<name>.parquet` and `<name>.npz`) under `--embeddings sidecar`.
    Sidecars,
    /// Its tar (`--embeddings model`, or sidecar files without their pair).
    Tar,
    /// Its files could not be looked at (gone between the listing and the look).
    Files,
}

impl Waiting {
    /// Its name in the manifest's `waiting` (`marker`, `sidecars`, `tar`, `files`).
    pub fn key(self) -> &'static str {
        match self {
            Waiting::Marker => "marker",
            Waiting::Sidecars => "sidecars",
            Waiting::Tar => "tar",
            Waiting::Files => "files",
        }
    }

    /// The [`Waiting`] named `key` by [`Waiting::key`] (as the manifest's `waiting` names it).
    pub fn from_key(key: &str) -> Option<Self> {
        [Waiting::Marker, Waiting::Sidecars, Waiting::Tar, Waiting::Files].into_iter().find(|w| w.key() == key)
    }

    /// What shards that wait this way wait for, in words.
    pub fn what(self) -> &'static str {
        match self {
            Waiting::Marker => "their completion markers (<name>_stats.json or <name>.done; --arrival)",
            Waiting::Sidecars => "their sidecars (<name>.parquet and <name>.npz; --embeddings sidecar)",
            Waiting::Tar => "their tars (sidecar files without their pair, or --embeddings model)",
            Waiting::Files => "their files to be readable",
        }
    }
}

/// What to do with a unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not arrived yet, and what it waits for.
    Wait(Waiting),
    /// Its committed rows hold: replay them.
    Replay,
    /// Read it (fresh, or re-score from stored embeddings).
    Run(Via, Vec<FileId>),
}

/// Checks a committed shard's score table against its record: present, readable, and (for records that carry
/// them) the digest and row count the commit wrote.
pub fn verify_score_table(layout: &Layout, rec: &ShardRecord) -> Result<(), String> {
    let path = layout.scores(&rec.name);
    let digest = flyt::file_sha256(&path).map_err(|e| e.to_string())?;
    match &rec.scores {
        Some(want) if want.sha256 != digest => Err(format!(
            "{}: SHA-256 {digest}, the commit record says {} ({} rows)",
            path.display(),
            want.sha256,
            want.rows
        )),
        _ => Ok(()),
    }
}

/// Decides what to do with a unit given its commit record, if any.
pub fn decide(unit: &Unit, record: Option<&ShardRecord>, models: &Identities, layout: &Layout) -> Decision {
    let sidecars = unit.parquet.clone().zip(unit.npz.clone());
    let needs_marker = match models.arrival {
        Arrival::Marker => true,
        Arrival::Rename => false,
        Arrival::Auto => unit.marked_dir,
    };
    if needs_marker && !unit.marker {
        return Decision::Wait(Waiting::Marker);
    }
    let via = match (models.embeddings, &unit.tar, &sidecars) {
        (EmbeddingSource::Model, Some(tar), _) => Via::Model { tar: tar.clone() },
        (EmbeddingSource::Model, None, _) => return Decision::Wait(Waiting::Tar),
        (_, _, Some((parquet, npz))) => Via::Sidecar { parquet: parquet.clone(), npz: npz.clone(), stored: false },
        (EmbeddingSource::Sidecar, _, None) => return Decision::Wait(Waiting::Sidecars),
        (EmbeddingSource::Auto, Some(tar), None) => Via::Model { tar: tar.clone() },
        (EmbeddingSource::Auto, None, None) => return Decision::Wait(Waiting::Tar),
    };
    let files: Vec<PathBuf> = match &via {
        Via::Model { tar } => vec![tar.clone()],
        Via::Sidecar { parquet, npz, .. } => vec![parquet.clone(), npz.clone()],
        Via::Metadata { parquet } => vec![parquet.clone()],
    };
    let Ok(inputs) = files.iter().map(|f| FileId::stat(f)).collect::<std::io::Result<Vec<_>>>() else {
        return Decision::Wait(Waiting::Files);
    };
    let Some(rec) = record else { return Decision::Run(via, inputs) };
    // A shard is its file name in the watched directory and its content, however the directory is spelled
    // (`watch`, `./watch/`, `/abs/watch`): the quick check (size and mtime) holds for the same path, and a
    // digest decides otherwise.
    let same_inputs = rec.inputs.len() == inputs.len()
        && rec.inputs.iter().zip(&inputs).all(|(a, b)| {
            a.path.file_name() == b.path.file_name()
                && ((a.path == b.path && a.size == b.size && a.mtime_ns == b.mtime_ns)
                    || flyt::file_sha256(&b.path).is_ok_and(|d| d == a.sha256))
        });
    let clip_ok = rec.models.get("clip").map(|s| s.as_str()) == Some(models.clip_identity(&via).as_str());
    // A record from before content digests, under exact dedup: its score table (and stored embeddings) have
    // none, so the shard is read again.
    if !same_inputs || !clip_ok || (models.content && !rec.content_digests) {
        return Decision::Run(via, inputs);
    }
    if models.same_scoring(rec) {
        // The score table must be the one the commit wrote: a table changed, cut, missing or unreadable is
        // rebuilt from the shard's inputs, never replayed as it is.
        return match verify_score_table(layout, rec) {
            Ok(()) => Decision::Replay,
            Err(why) => {
                tracing::warn!(shard = %rec.name, %why, "the committed score table fails its check; reading the shard again");
                Decision::Run(via, inputs)
            }
        };
    }
    // Only the scoring changed (a method, a FLYT head, a method's inputs): re-score from the embeddings at hand.
    match (&via, &rec.embeddings) {
        (Via::Sidecar { .. } | Via::Metadata { .. }, _) => Decision::Run(via, inputs),
        (Via::Model { .. }, Some((parquet, npz))) if parquet.exists() && npz.exists() => {
            Decision::Run(Via::Sidecar { parquet: parquet.clone(), npz: npz.clone(), stored: true }, inputs)
        }
        _ => Decision::Run(via, inputs),
    }
}

/// Lists the external score files of a directory (`*.parquet`, not temporary), in name order.
pub fn list_score_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.extension().is_some_and(|x| x == "parquet")
                        && p.file_name().is_some_and(|n| !is_temporary(&n.to_string_lossy()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The source's memory between scans.
pub struct Watcher {
    /// Directories to list.
    pub dirs: Vec<PathBuf>,
    /// Explicit files.
    pub files: Vec<PathBuf>,
    /// The external score directory.
    pub scores: Option<PathBuf>,
    /// Models and input rules.
    pub models: Identities,
    /// The output layout (for commit records).
    pub layout: Layout,
    /// Units already given out: their inputs as they were then, and the time they were given at.
    given: HashMap<String, (Vec<FileId>, u64)>,
    /// Score files already given out.
    given_scores: HashMap<PathBuf, FileId>,
    /// Shard jobs given out whose outcome is not checked yet: time → name.
    unchecked: BTreeMap<u64, String>,
    /// Shards whose job failed (only while following): when to try again (`None` once given out again, until
    /// its outcome is known), and how many tries failed so far.
    retry: HashMap<String, (Option<Instant>, u32)>,
    /// Paths under shard names that are not regular files, and why (each warned about once).
    refused: BTreeMap<PathBuf, String>,
    /// The shards the last scan found that have not arrived, by what they wait for.
    pub waiting: BTreeMap<Waiting, Vec<String>>,
    /// Watched directories that show img2dataset's layout (kept once shown).
    marked: std::collections::BTreeSet<PathBuf>,
    /// Whether each directory's arrival rule was told (at the first scan, and when a directory gains the
    /// layout later).
    told: BTreeMap<PathBuf, bool>,
    /// Names an earlier run committed that the first scan gave out again (replays and re-reads).
    pub restoring: std::collections::HashSet<String>,
    /// Whether failed shards are tried again (a following run).
    pub retry_failed: bool,
}

impl Watcher {
    /// A watcher over `shards` (directories are listed, files taken as they are) and an optional directory of
    /// external score files, committing into `layout`.
    pub fn new(shards: &[PathBuf], scores: Option<PathBuf>, models: Identities, layout: Layout) -> Self {
        Watcher {
            dirs: shards.iter().filter(|p| p.is_dir()).cloned().collect(),
            files: shards.iter().filter(|p| !p.is_dir()).cloned().collect(),
            scores,
            models,
            layout,
            given: HashMap::new(),
            given_scores: HashMap::new(),
            unchecked: BTreeMap::new(),
            retry: HashMap::new(),
            refused: BTreeMap::new(),
            waiting: BTreeMap::new(),
            marked: Default::default(),
            told: BTreeMap::new(),
            restoring: Default::default(),
            retry_failed: false,
        }
    }

    /// Shard jobs done (before `committed_before`) without a commit record of the inputs they were given:
    /// they failed. While following, each is given out again after a pause that doubles with every failure
    /// (1 s up to 5 min), so a shard that failed for lack of disk space commits once space is back.
    fn check_outcomes(&mut self, committed_before: u64) {
        let done: Vec<u64> = self.unchecked.range(..committed_before).map(|(t, _)| *t).collect();
        for t in done {
            let Some(name) = self.unchecked.remove(&t) else { continue };
            let Some((inputs, at)) = self.given.get(&name) else { continue };
            if *at != t {
                continue; // given again since
            }
            let committed = self.layout.record_of(&name).is_some_and(|r| {
                r.inputs.len() == inputs.len()
                    && r.inputs.iter().zip(inputs).all(|(a, b)| a.size == b.size && a.mtime_ns == b.mtime_ns)
            });
            if committed {
                self.retry.remove(&name);
            } else if self.retry_failed && !flyt::stop_requested() {
                // (A shard interrupted by a stop is not tried again: the run is ending.)
                let tries = self.retry.get(&name).map(|r| r.1).unwrap_or(0) + 1;
                let pause = Duration::from_secs(1u64 << (tries - 1).min(9)).min(Duration::from_secs(300));
                tracing::warn!(shard = %name, tries, pause_s = pause.as_secs(), "the shard failed; it will be tried again");
                self.retry.insert(name, (Some(Instant::now() + pause), tries));
            }
        }
    }

    /// One scan: the jobs that are due now. `committed_before` is the time below which every job is done.
    /// `first` marks the scan at start-up, when committed shards are replayed.
    pub fn scan(&mut self, first: bool, committed_before: u64) -> Vec<Job> {
        let mut jobs = Vec::new();
        let records = if first { self.layout.records() } else { BTreeMap::new() };
        let mut refused = BTreeMap::new();
        let units = list_units(&self.dirs, &self.files, &mut refused, &mut self.marked);
        self.tell_arrival(&units);
        for (p, why) in &refused {
            if !self.refused.contains_key(p) {
                tracing::warn!(%why, "left out of the input: only regular files are shards");
            }
        }
        self.refused = refused;
        self.check_outcomes(committed_before);
        // Failed shards whose pause is over are given out as if new.
        let now = Instant::now();
        for (name, (when, _)) in self.retry.iter_mut() {
            if when.is_some_and(|w| w <= now) {
                *when = None;
                self.given.remove(name);
            }
        }
        // Shards whose files are all gone leave the pool (once their job is done).
        let gone: Vec<(String, u64)> =
            self.given.iter().filter(|(n, _)| !units.contains_key(*n)).map(|(n, (_, at))| (n.clone(), *at)).collect();
        for (name, at) in gone {
            if at >= committed_before {
                continue;
            }
            self.given.remove(&name);
            if let Some(r) = self.layout.record_of(&name) {
                match self.layout.replay(&r, &self.models.columns) {
                    Ok(s) => {
                        tracing::info!(shard = %name, "deleted from the input; its rows leave the pool");
                        jobs.push(Job::Retract { name, rows: pool_rows(&s) });
                    }
                    Err(e) => tracing::warn!(shard = %name, error = %e, "cannot read the deleted shard's rows"),
                }
            }
        }
        let mut waiting: BTreeMap<Waiting, Vec<String>> = BTreeMap::new();
        for (name, unit) in units {
            match self.given.get(&name) {
                None => {
                    let rec = if first { records.get(&name).cloned() } else { self.layout.record_of(&name) };
                    match decide(&unit, rec.as_ref(), &self.models, &self.layout) {
                        Decision::Wait(why) => waiting.entry(why).or_default().push(name),
                        Decision::Replay => {
                            let inputs = rec.map(|r| r.inputs).unwrap_or_default();
                            self.given.insert(name.clone(), (inputs, 0));
                            if first {
                                self.restoring.insert(name.clone());
                            }
                            jobs.push(Job::Replay { name });
                        }
                        Decision::Run(via, inputs) => {
                            if first && rec.is_some() {
                                self.restoring.insert(name.clone());
                            }
                            self.given.insert(name.clone(), (inputs.clone(), u64::MAX));
                            jobs.push(Job::Shard { name, inputs, via });
                        }
                    }
                }
                Some((inputs, at)) => {
                    if inputs.iter().all(|f| f.unchanged()) || *at >= committed_before {
                        continue; // unchanged, or its job is still running (look again next scan)
                    }
                    // Changed after it was given out: a re-delivery (same bytes: nothing to do) or a replacement.
                    // One that has not arrived (its marker not there yet) keeps the inputs it was given with, so
                    // it is looked at again, without hashing it, on every scan until it has.
                    let decision = decide(&unit, None, &self.models, &self.layout);
                    if let Decision::Wait(why) = decision {
                        waiting.entry(why).or_default().push(name);
                        continue;
                    }
                    let rec = self.layout.record_of(&name);
                    let same = rec.as_ref().is_some_and(|r| {
                        r.inputs.len() == inputs.len()
                            && r.inputs
                                .iter()
                                .zip(inputs)
                                .all(|(f, now)| flyt::file_sha256(&now.path).is_ok_and(|d| d == f.sha256))
                    });
                    let now: Vec<FileId> = inputs.iter().filter_map(|f| FileId::stat(&f.path).ok()).collect();
                    if same {
                        tracing::info!(shard = %name, "re-delivered with the same bytes; nothing changes");
                        self.given.insert(name, (now, *at));
                        continue;
                    }
                    match decision {
                        Decision::Run(via, inputs) => {
                            if let Some(r) = rec {
                                match self.layout.replay(&r, &self.models.columns) {
                                    Ok(s) => jobs.push(Job::Retract { name: name.clone(), rows: pool_rows(&s) }),
                                    Err(e) => {
                                        tracing::warn!(shard = %name, error = %e, "cannot read the replaced shard's rows")
                                    }
                                }
                            }
                            tracing::info!(shard = %name, "replaced with different bytes; reading it again");
                            self.given.insert(name.clone(), (inputs.clone(), u64::MAX));
                            jobs.push(Job::Shard { name, inputs, via });
                        }
                        _ => {
                            self.given.insert(name, (now, *at));
                        }
                    }
                }
            }
        }
        self.waiting = waiting;
        if let Some(dir) = &self.scores {
            for path in list_score_files(dir) {
                match (self.given_scores.get(&path), FileId::stat(&path)) {
                    (None, Ok(id)) => {
                        self.given_scores.insert(path.clone(), id);
                        jobs.push(Job::Scores { path });
                    }
                    (Some(old), Ok(id)) if old.size != id.size || old.mtime_ns != id.mtime_ns => {
                        tracing::warn!(file = %path.display(), "score file changed after it was read; the change is ignored (score files are immutable: write a new file)");
                        self.given_scores.insert(path, id);
                    }
                    _ => {}
                }
            }
        }
        jobs
    }

    /// Says, per watched directory, when its shards count as arrived: at the first scan (in the log), and
    /// again when a directory shows img2dataset's layout later under `--arrival auto` (a warning when shards
    /// were already read there without markers).
    fn tell_arrival(&mut self, units: &BTreeMap<String, Unit>) {
        for d in &self.dirs {
            let marked = self.marked.contains(d);
            if self.told.get(d) == Some(&marked) {
                continue;
            }
            let first = !self.told.contains_key(d);
            self.told.insert(d.clone(), marked);
            tracing::info!(dir = %d.display(), "{}", arrival_rule(self.models.arrival, marked));
            if !first && marked {
                let taken =
                    units.values().filter(|u| u.marked_dir && !u.marker && self.given.contains_key(&u.name)).count();
                if taken > 0 {
                    tracing::warn!(dir = %d.display(), shards = taken, "the directory now shows img2dataset's layout, but shards were read there before their markers; each is read again if it changes");
                }
            }
        }
    }

    /// Records the time a job was given at (after [`Watcher::scan`]).
    pub fn given_at(&mut self, name: &str, time: u64) {
        if let Some(e) = self.given.get_mut(name) {
            e.1 = time;
            self.unchecked.insert(time, name.to_string());
        }
    }
}

/// How the source runs: its watcher, whether it follows the inputs, and when it stops.
pub struct WatchOptions {
    /// What to watch and how to decide.
    pub watcher: Watcher,
    /// Keep listing the inputs (else one scan, then the source closes).
    pub follow: bool,
    /// How often to list while following.
    pub poll: Duration,
    /// While following: close once nothing new arrived for this long and every job is done.
    pub idle_exit: Option<Duration>,
    /// Set (by a signal handler) to stop following: the source closes and the graph drains.
    pub stop: &'static AtomicBool,
    /// Counters (`given`: jobs handed out).
    pub counters: Arc<Counters>,
    /// The least time not yet complete, kept by the graph's publisher on the same worker (a job whose time is
    /// below it is done).
    pub done_before: Rc<Cell<u64>>,
    /// Set after the first scan to the time before which every shard an earlier run committed has come back
    /// (one past the latest job given for such a shard; 0 when there is none); read by the publisher.
    pub restored_before: Rc<Cell<u64>>,
}

/// The shard source: on global worker 0, scans the inputs ([`Watcher::scan`]) and emits each job at its own
/// timestamp (replays share timestamp 0; a retraction shares the time of the job that replaces it), then
/// downgrades its capability past them; other workers emit nothing. The jobs still have to be exchanged to
/// their workers ([`Job::route`]).
///
/// ```
/// use flyt::curation::Layout;
/// use flyt_operators::{Arrival, EmbeddingSource, Identities, Job, WatchOptions, WatchShards, Watcher};
/// use std::sync::{Arc, Mutex};
/// use timely::dataflow::operators::Inspect;
///
/// static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// let dir = tempfile::tempdir().unwrap();
/// flyt::synth::SynthPool { shards: 2, samples_per_shard: 3, ..Default::default() }.write(dir.path()).unwrap();
/// let ids = Identities {
///     embeddings: EmbeddingSource::Model, arrival: Arrival::Rename, clip: Some("clip:x".into()), prefix: None,
///     columns: vec!["clip_score".into()], methods: Default::default(), content: false,
/// };
/// let out = tempfile::tempdir().unwrap();
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let sink = seen.clone();
/// let shards = vec![dir.path().to_path_buf()];
/// timely::example(move |scope| {
///     let opts = WatchOptions {
///         watcher: Watcher::new(&shards, None, ids, Layout::new(out.path())),
///         follow: false, poll: std::time::Duration::from_millis(10), idle_exit: None, stop: &STOP,
///         counters: Default::default(), done_before: Default::default(), restored_before: Default::default(),
///     };
///     scope.watch_shards(opts).inspect(move |j| {
///         if let Job::Shard { name, .. } = j { sink.lock().unwrap().push(name.clone()) }
///     });
/// });
/// let mut seen = seen.lock().unwrap().clone();
/// seen.sort();
/// assert_eq!(seen, vec!["00000000".to_string(), "00000001".to_string()]);
/// ```
pub trait WatchShards<'scope> {
    /// The jobs.
    fn watch_shards(self, options: WatchOptions) -> Stream<'scope, u64, Vec<Job>>;
}

impl<'scope> WatchShards<'scope> for Scope<'scope, u64> {
    fn watch_shards(self, options: WatchOptions) -> Stream<'scope, u64, Vec<Job>> {
        let WatchOptions { mut watcher, follow, poll, idle_exit, stop, counters, done_before, restored_before } =
            options;
        watcher.retry_failed = follow;
        let index = self.index();
        let scope = self;
        source::<u64, CapacityContainerBuilder<Vec<Job>>, _, _>(self, "WatchShards", move |cap, info| {
            let activator = scope.activator_for(info.address);
            let mut cap = (index == 0).then_some(cap);
            let mut next = 1u64;
            let mut first = true;
            let mut last_new = Instant::now();
            move |output| {
                let Some(c) = cap.as_mut() else { return };
                let jobs = watcher.scan(first, done_before.get());
                if let Ok(mut w) = counters.waiting.lock() {
                    w.clone_from(&watcher.waiting);
                }
                if !jobs.is_empty() {
                    last_new = Instant::now();
                }
                let mut restored = 0u64;
                for job in jobs {
                    let t = match &job {
                        Job::Replay { .. } => 0,
                        Job::Retract { .. } => next, // with the replacing shard's job, which follows
                        Job::Shard { name, .. } => {
                            watcher.given_at(name, next);
                            next += 1;
                            next - 1
                        }
                        Job::Scores { .. } => {
                            next += 1;
                            next - 1
                        }
                    };
                    if !matches!(job, Job::Scores { .. } | Job::Retract { .. }) {
                        counters.given.fetch_add(1, Ordering::Relaxed);
                    }
                    if first
                        && let Job::Replay { name } | Job::Shard { name, .. } = &job
                        && watcher.restoring.contains(name)
                    {
                        restored = restored.max(t + 1);
                    }
                    output.session(&c.delayed(&t)).give(job);
                }
                if first {
                    restored_before.set(restored);
                }
                first = false;
                c.downgrade(&next);
                let idle = idle_exit.is_some_and(|d| last_new.elapsed() >= d && done_before.get() >= next);
                if !follow || stop.load(Ordering::Relaxed) || idle {
                    cap = None;
                } else {
                    activator.activate_after(poll);
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(arrival: Arrival) -> Identities {
        Identities {
            embeddings: EmbeddingSource::Auto,
            arrival,
            clip: Some("clip:x".into()),
            prefix: None,
            columns: vec!["clip_score".into()],
            methods: Default::default(),
            content: false,
        }
    }

    /// Under the old default (`rename`) a tar img2dataset was still writing in place was read half. Under
    /// `auto`, a directory with img2dataset's `_tmp/` (or a `<name>_stats.json` beside its tar) makes its shards wait for their
    /// markers, and keeps doing so after `_tmp/` is gone; elsewhere a shard is read as soon as it is there.
    #[test]
    fn auto_arrival_waited_for_nothing_in_img2datasets_directory() {
        let d = tempfile::tempdir().unwrap();
        let watch = d.path().join("watch");
        std::fs::create_dir_all(watch.join("_tmp")).unwrap();
        std::fs::write(watch.join("00000.tar"), b"").unwrap();
        let out = Layout::new(d.path().join("out"));
        let mut marked = std::collections::BTreeSet::new();
        let list = |marked: &mut std::collections::BTreeSet<PathBuf>| {
            list_units(std::slice::from_ref(&watch), &[], &mut BTreeMap::new(), marked)
        };
        let units = list(&mut marked);
        let u = &units["00000"];
        assert!(u.marked_dir && !u.marker);
        assert_eq!(decide(u, None, &ids(Arrival::Auto), &out), Decision::Wait(Waiting::Marker));
        assert!(matches!(decide(u, None, &ids(Arrival::Rename), &out), Decision::Run(..)));
        std::fs::write(watch.join("00000_stats.json"), b"{}").unwrap();
        std::fs::remove_dir(watch.join("_tmp")).unwrap();
        std::fs::write(watch.join("00001.tar"), b"").unwrap();
        let units = list(&mut marked);
        assert!(matches!(decide(&units["00000"], None, &ids(Arrival::Auto), &out), Decision::Run(..)));
        assert_eq!(decide(&units["00001"], None, &ids(Arrival::Auto), &out), Decision::Wait(Waiting::Marker));
        // A directory without the layout: read on sight; explicit `marker` waits anyway.
        let plain = d.path().join("plain");
        std::fs::create_dir_all(&plain).unwrap();
        std::fs::write(plain.join("a.tar"), b"").unwrap();
        let units = list_units(std::slice::from_ref(&plain), &[], &mut BTreeMap::new(), &mut Default::default());
        assert!(matches!(decide(&units["a"], None, &ids(Arrival::Auto), &out), Decision::Run(..)));
        assert_eq!(decide(&units["a"], None, &ids(Arrival::Marker), &out), Decision::Wait(Waiting::Marker));
        assert_eq!("auto".parse::<Arrival>().unwrap(), Arrival::Auto);
        // Another tool's `summary_stats.json` is not img2dataset's marker of a shard.
        let other = d.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("a.tar"), b"").unwrap();
        std::fs::write(other.join("summary_stats.json"), b"{}").unwrap();
        let units = list_units(std::slice::from_ref(&other), &[], &mut BTreeMap::new(), &mut Default::default());
        assert!(!units["a"].marked_dir);
    }

    /// A shard read before its directory showed img2dataset's layout, that then changed while its marker was
    /// not there yet, was recorded as seen with its new size and mtime, so it was never read again once the
    /// marker came. It stays waiting, and is given out again when the marker arrives.
    #[test]
    fn a_shard_read_before_the_layout_showed_was_never_read_again() {
        let d = tempfile::tempdir().unwrap();
        let watch = d.path().join("watch");
        std::fs::create_dir_all(&watch).unwrap();
        std::fs::write(watch.join("00000.tar"), b"part").unwrap();
        let mut w =
            Watcher::new(std::slice::from_ref(&watch), None, ids(Arrival::Auto), Layout::new(d.path().join("o")));
        let jobs = w.scan(true, 0);
        assert!(matches!(&jobs[..], [Job::Shard { name, .. }] if name == "00000"));
        w.given_at("00000", 1);
        std::fs::create_dir_all(watch.join("_tmp")).unwrap();
        std::fs::write(watch.join("00000.tar"), b"part and the rest").unwrap();
        for _ in 0..2 {
            assert!(w.scan(false, 2).is_empty());
            assert_eq!(w.waiting.get(&Waiting::Marker), Some(&vec!["00000".to_string()]));
        }
        std::fs::write(watch.join("00000_stats.json"), b"{}").unwrap();
        let jobs = w.scan(false, 2);
        assert!(matches!(&jobs[..], [Job::Shard { name, .. }] if name == "00000"), "{jobs:?}");
    }
}
