//! `DedupUids`: a pool collection with one row per uid, the same whatever the arrival order, in about 40 bytes of
//! state per uid.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use differential_dataflow::consolidation::consolidate;
use differential_dataflow::{AsCollection, VecCollection};
use flyt::Uid;
use hashbrown::HashTable;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;
use timely::order::TotalOrder;
use timely::progress::Timestamp;

use crate::PoolRow;
use crate::soft_cap_sample::route;

/// Keeps one row per uid: the least [`PoolRow`] (the one from the shard whose name sorts first). A uid seen
/// in several shards (a re-delivered or duplicated shard) counts once; if the kept row's shard is retracted,
/// the next one takes its place.
///
/// Rows are exchanged by uid (as [`crate::SoftCapSample`] exchanges them, so the sampler downstream receives
/// them on the same worker) and each worker keeps its uids' rows in a compact table: a uid with one row costs
/// its uid, an interned shard number, a count and its scores (about 40 bytes with one score column, against
/// about 600 for the same row in a differential arrangement, which also keeps the shard name and a copy of the
/// output). A uid with several distinct rows keeps them all, ordered, until one is left. Timestamps are applied
/// in order, each once complete.
///
/// ```
/// use differential_dataflow::input::Input;
/// use flyt::Uid;
/// use flyt_operators::{DedupUids, PoolRow};
///
/// timely::example(|scope| {
///     let row = |shard: &str| PoolRow { shard: shard.into(), values: vec![1.0f32.to_bits()], ..Default::default() };
///     let (_, rows) = scope.new_collection_from(vec![(Uid::from_u128(1), row("b")), (Uid::from_u128(1), row("a"))]);
///     let (_, want) = scope.new_collection_from(vec![(Uid::from_u128(1), row("a"))]);
///     rows.dedup_uids().assert_eq(want);
/// });
/// ```
pub trait DedupUids<'scope, T: Timestamp> {
    /// One row per uid.
    fn dedup_uids(self) -> VecCollection<'scope, T, (Uid, PoolRow)>;
}

impl<'scope, T> DedupUids<'scope, T> for VecCollection<'scope, T, (Uid, PoolRow)>
where
    T: Timestamp + TotalOrder + timely::ExchangeData,
{
    fn dedup_uids(self) -> VecCollection<'scope, T, (Uid, PoolRow)> {
        type Update<T> = ((Uid, PoolRow), T, isize);
        self.inner
            .unary_frontier::<CapacityContainerBuilder<Vec<Update<T>>>, _, _, _>(
                Exchange::new(|((u, _), _, _): &Update<T>| route(u)),
                "DedupUids",
                |_cap, _info| {
                    let mut rows = Rows::default();
                    let mut stash: BTreeMap<T, (Capability<T>, Vec<Change>)> = BTreeMap::new();
                    move |(input, frontier), output| {
                        input.for_each(|cap, data| {
                            for (row, t, d) in data.drain(..) {
                                let at = stash.entry(t.clone()).or_insert_with(|| (cap.delayed(&t, 0), Vec::new()));
                                at.1.push((row, d));
                            }
                        });
                        // Apply complete timestamps in order.
                        while let Some(t) = stash.keys().next().cloned() {
                            if frontier.less_equal(&t) {
                                break;
                            }
                            let Some((cap, updates)) = stash.remove(&t) else { break };
                            let changes = rows.apply(updates);
                            if !changes.is_empty() {
                                output.session(&cap).give_iterator(changes.into_iter().map(|(r, d)| (r, t.clone(), d)));
                            }
                        }
                    }
                },
            )
            .as_collection()
    }
}

/// A row and how many copies come or go.
type Change = ((Uid, PoolRow), isize);

fn uid_hash(uid: &Uid) -> u64 {
    let mut z = uid.high() ^ uid.low().rotate_left(29) ^ 0x9E37_79B9_7F4A_7C15;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uid with exactly one distinct row, held `count` times.
#[derive(Clone, Copy, Debug)]
struct Slot {
    uid: Uid,
    /// The shard's number in [`Rows::names`].
    shard: u32,
    count: u16,
    /// Bit 0: the row has [`PoolRow::bytes`]; bit 1: [`PoolRow::pixels`] (in [`Rows::digests`]).
    flags: u16,
}

/// One worker's rows.
#[derive(Default)]
struct Rows {
    /// Slot numbers, by uid.
    index: HashTable<u32>,
    slots: Vec<Slot>,
    /// Slots free for reuse.
    free: Vec<u32>,
    /// The scores, `width` per slot (the width of the first row; a row of another width goes to `many`).
    width: Option<usize>,
    values: Vec<u32>,
    /// The content digests per slot, (bytes, pixels), once any row has one.
    digests: Vec<[u128; 2]>,
    /// Uids with more than one distinct row (or a count a slot cannot hold): every row with its count.
    many: HashMap<Uid, BTreeMap<PoolRow, isize>>,
    /// Shard names, interned: a slot holds a number.
    names: Vec<Arc<str>>,
    name_ids: HashMap<Arc<str>, u32>,
}

impl Rows {
    fn slot_of(&self, uid: &Uid) -> Option<u32> {
        let slots = &self.slots;
        self.index.find(uid_hash(uid), |&s| slots[s as usize].uid == *uid).copied()
    }

    fn row(&self, s: u32) -> PoolRow {
        let slot = self.slots[s as usize];
        let w = self.width.unwrap_or(0);
        let digests = self.digests.get(s as usize).copied().unwrap_or_default();
        PoolRow {
            shard: self.names[slot.shard as usize].to_string(),
            values: self.values[s as usize * w..(s as usize + 1) * w].to_vec(),
            bytes: (slot.flags & 1 != 0).then_some(digests[0]),
            pixels: (slot.flags & 2 != 0).then_some(digests[1]),
        }
    }

    /// The row kept for `uid` now: its only row, or the least with a positive count.
    fn kept(&self, uid: &Uid) -> Option<PoolRow> {
        if let Some(s) = self.slot_of(uid) {
            return Some(self.row(s));
        }
        self.many.get(uid).and_then(|rows| rows.iter().find(|(_, c)| **c > 0).map(|(r, _)| r.clone()))
    }

    fn intern(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.name_ids.get(name) {
            return i;
        }
        let name: Arc<str> = Arc::from(name);
        let i = self.names.len() as u32;
        self.names.push(name.clone());
        self.name_ids.insert(name, i);
        i
    }

    /// Whether `row` is the row in slot `s`.
    fn same(&self, s: u32, row: &PoolRow) -> bool {
        let slot = self.slots[s as usize];
        let w = self.width.unwrap_or(0);
        let digests = self.digests.get(s as usize).copied().unwrap_or_default();
        *self.names[slot.shard as usize] == *row.shard
            && row.values.len() == w
            && self.values[s as usize * w..(s as usize + 1) * w] == row.values[..]
            && row.bytes == (slot.flags & 1 != 0).then_some(digests[0])
            && row.pixels == (slot.flags & 2 != 0).then_some(digests[1])
    }

    /// Puts `row` (held `count` times, 1 ≤ count ≤ u16::MAX) in a slot; false when its width does not fit.
    fn put(&mut self, uid: Uid, row: &PoolRow, count: isize) -> bool {
        let w = *self.width.get_or_insert(row.values.len());
        if row.values.len() != w || count < 1 || count > u16::MAX as isize {
            return false;
        }
        let shard = self.intern(&row.shard);
        let flags = u16::from(row.bytes.is_some()) | (u16::from(row.pixels.is_some()) << 1);
        let slot = Slot { uid, shard, count: count as u16, flags };
        let s = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = slot;
                self.values[s as usize * w..(s as usize + 1) * w].copy_from_slice(&row.values);
                s
            }
            None => {
                self.slots.push(slot);
                self.values.extend_from_slice(&row.values);
                (self.slots.len() - 1) as u32
            }
        };
        if flags != 0 && self.digests.len() < self.slots.len() {
            self.digests.resize(self.slots.len(), [0; 2]);
        }
        if let Some(d) = self.digests.get_mut(s as usize) {
            *d = [row.bytes.unwrap_or(0), row.pixels.unwrap_or(0)];
        }
        let slots = &self.slots;
        self.index.insert_unique(uid_hash(&uid), s, |&x| uid_hash(&slots[x as usize].uid));
        true
    }

    /// Empties slot `s` (its uid leaves the index).
    fn take(&mut self, s: u32) {
        let uid = self.slots[s as usize].uid;
        let slots = &self.slots;
        if let Ok(e) = self.index.find_entry(uid_hash(&uid), |&x| slots[x as usize].uid == uid) {
            e.remove();
        }
        self.free.push(s);
    }

    /// Applies one timestamp's updates; returns the changes of the kept rows.
    fn apply(&mut self, mut updates: Vec<Change>) -> Vec<Change> {
        consolidate(&mut updates);
        let mut out = Vec::new();
        let mut i = 0;
        while i < updates.len() {
            let uid = updates[i].0.0;
            let end = i + updates[i..].iter().take_while(|((u, _), _)| *u == uid).count();
            let before = self.kept(&uid);
            for ((_, row), d) in &updates[i..end] {
                self.update(uid, row, *d);
            }
            let after = self.kept(&uid);
            if before != after {
                if let Some(b) = before {
                    out.push(((uid, b), -1));
                }
                if let Some(a) = after {
                    out.push(((uid, a), 1));
                }
            }
            i = end;
        }
        out
    }

    /// Adds `d` copies of `row` to `uid`'s rows.
    fn update(&mut self, uid: Uid, row: &PoolRow, d: isize) {
        if let Some(s) = self.slot_of(&uid) {
            let count = self.slots[s as usize].count as isize;
            if self.same(s, row) {
                let c = count + d;
                if c == 0 {
                    self.take(s);
                    return;
                }
                if (1..=u16::MAX as isize).contains(&c) {
                    self.slots[s as usize].count = c as u16;
                    return;
                }
            }
            // Another row for the uid (or a count a slot cannot hold): all its rows go to `many`.
            let mine = self.row(s);
            self.take(s);
            let rows = self.many.entry(uid).or_default();
            *rows.entry(mine).or_insert(0) += count;
        } else if !self.many.contains_key(&uid) && self.put(uid, row, d) {
            return;
        }
        let rows = self.many.entry(uid).or_default();
        let c = rows.entry(row.clone()).or_insert(0);
        *c += d;
        if *c == 0 {
            rows.remove(row);
        }
        // Back to a slot when one row is left.
        if rows.len() <= 1 {
            let Some(rows) = self.many.remove(&uid) else { return };
            if let Some((r, c)) = rows.into_iter().next()
                && !self.put(uid, &r, c)
            {
                self.many.insert(uid, BTreeMap::from([(r, c)]));
            }
        }
    }
}
