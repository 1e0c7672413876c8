//! Which of a partition's waiting events may start now, when events of
//! different keys run side by side (key-ordered concurrency): the events
//! start in batches, each batch run in offset order by one transaction.
//!
//! - A key is in at most one running batch, so one key's events run in
//!   offset order and never two at once.
//! - An event without a key, or one whose routes ask for partition order,
//!   keeps partition order: it waits for everything before it to finish,
//!   and starts in a batch of consecutive events that runs alone.
//! - At most `max_running` batches run at once.
//!
//! Keys are compared by a 64-bit hash: two keys that collide only run one
//! after the other, which is always allowed.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};

/// A batch started by [`KeyOrder::next_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchId(u64);

#[derive(Debug, Clone)]
struct Running {
    id: BatchId,
    /// `None`: a batch in partition order, which runs alone.
    keys: Option<HashSet<u64>>,
    events: usize,
}

/// A partition's waiting and running events, by key.
#[derive(Debug, Clone)]
pub struct KeyOrder {
    /// In offset order: offset, key hash, and whether it must run alone
    /// (see [`KeyOrder::retry_alone`]).
    waiting: VecDeque<(i64, Option<u64>, bool)>,
    running: Vec<Running>,
    running_events: usize,
    max_running: usize,
    next_id: u64,
}

fn hash_key(key: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

impl KeyOrder {
    /// At most `max_running` batches running at once (at least one).
    pub fn new(max_running: usize) -> Self {
        Self {
            waiting: VecDeque::new(),
            running: Vec::new(),
            running_events: 0,
            max_running: max_running.max(1),
            next_id: 0,
        }
    }

    /// An event arrives, in offset order; `key` is `None` for an event
    /// that keeps partition order.
    pub fn push(&mut self, offset: i64, key: Option<&[u8]>) {
        self.waiting.push_back((offset, key.map(hash_key), false));
    }

    /// An event of a batch that gave up without finishing it goes back in
    /// line, in its offset's place, to run alone in a batch of its own
    /// (call before [`KeyOrder::finish`] of its batch, so that nothing of
    /// its key passes it).
    pub fn retry_alone(&mut self, offset: i64, key: Option<&[u8]>) {
        let at = self.waiting.partition_point(|(o, _, _)| *o < offset);
        self.waiting.insert(at, (offset, key.map(hash_key), true));
    }

    /// Whether another batch may run now (fewer than `max_running`, and
    /// no batch in partition order running).
    pub fn has_room(&self) -> bool {
        self.running.len() < self.max_running && self.running.iter().all(|r| r.keys.is_some())
    }

    /// The next batch that may start now, of at most `max_events` events
    /// (at least one), taken off the waiting list in offset order; `None`
    /// when none may.
    pub fn next_batch(&mut self, max_events: usize) -> Option<(BatchId, Vec<i64>)> {
        let max_events = max_events.max(1);
        if !self.has_room() {
            return None;
        }
        let (_, head_key, head_alone) = *self.waiting.front()?;
        let id = BatchId(self.next_id);
        if head_key.is_none() {
            // Partition order: it starts alone, once everything before it
            // has finished, with the consecutive events after it (up to one
            // that must run alone).
            if !self.running.is_empty() {
                return None;
            }
            let n = if head_alone {
                1
            } else {
                self.waiting
                    .iter()
                    .take(max_events)
                    .take_while(|(_, _, alone)| !alone)
                    .count()
            };
            let offsets: Vec<i64> = self.waiting.drain(..n).map(|(o, _, _)| o).collect();
            return Some(self.started(id, None, offsets));
        }
        let blocked: HashSet<u64> = self
            .running
            .iter()
            .filter_map(|r| r.keys.as_ref())
            .flatten()
            .copied()
            .collect();
        let mut mine: HashSet<u64> = HashSet::new();
        let mut skipped: HashSet<u64> = HashSet::new();
        let mut taken: Vec<usize> = Vec::new();
        for (i, (_, key, alone)) in self.waiting.iter().enumerate() {
            if taken.len() == max_events {
                break;
            }
            // Nothing passes an event in partition order.
            let Some(k) = key else { break };
            if blocked.contains(k) || skipped.contains(k) || (*alone && !taken.is_empty()) {
                // Running elsewhere (or an earlier event of it waits): its
                // later events wait in order.
                skipped.insert(*k);
            } else if *alone {
                // Alone: a batch of its own.
                mine.insert(*k);
                taken.push(i);
                break;
            } else {
                mine.insert(*k);
                taken.push(i);
            }
        }
        if taken.is_empty() {
            return None;
        }
        let mut offsets = Vec::with_capacity(taken.len());
        let mut kept = VecDeque::with_capacity(self.waiting.len() - taken.len());
        let mut next = taken.iter().peekable();
        for (i, entry) in self.waiting.drain(..).enumerate() {
            if next.peek() == Some(&&i) {
                next.next();
                offsets.push(entry.0);
            } else {
                kept.push_back(entry);
            }
        }
        self.waiting = kept;
        Some(self.started(id, Some(mine), offsets))
    }

    fn started(
        &mut self,
        id: BatchId,
        keys: Option<HashSet<u64>>,
        offsets: Vec<i64>,
    ) -> (BatchId, Vec<i64>) {
        self.next_id += 1;
        self.running_events += offsets.len();
        self.running.push(Running {
            id,
            keys,
            events: offsets.len(),
        });
        (id, offsets)
    }

    /// The batch `id` finished (all its events, or it gave up on the
    /// rest: either way its keys are free); `false` if it was not running.
    pub fn finish(&mut self, id: BatchId) -> bool {
        match self.running.iter().position(|r| r.id == id) {
            Some(i) => {
                let r = self.running.swap_remove(i);
                self.running_events -= r.events;
                true
            }
            None => false,
        }
    }

    /// Events waiting.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Batches running.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Events waiting and running.
    pub fn len(&self) -> usize {
        self.waiting.len() + self.running_events
    }

    /// Whether nothing waits or runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    #[test]
    fn keys_run_side_by_side_and_a_keyless_event_alone() {
        let mut q = KeyOrder::new(8);
        q.push(0, Some(b"a"));
        q.push(1, Some(b"b"));
        q.push(2, Some(b"a"));
        q.push(3, None);
        q.push(4, Some(b"c"));
        let (first, offsets) = q.next_batch(1).unwrap_or_else(|| panic!("0 may start"));
        assert_eq!(offsets, vec![0]);
        let (second, offsets) = q.next_batch(4).unwrap_or_else(|| panic!("1 may start"));
        assert_eq!(offsets, vec![1], "a is running: 2 waits; 3 holds 4");
        assert_eq!(q.next_batch(4), None);
        assert!(q.finish(first));
        let (third, offsets) = q.next_batch(4).unwrap_or_else(|| panic!("2 may start"));
        assert_eq!(offsets, vec![2]);
        assert_eq!(q.len(), 4);
        assert!(q.finish(second));
        assert_eq!(q.next_batch(4), None, "3 waits for 2");
        assert!(q.finish(third));
        let (fourth, offsets) = q.next_batch(4).unwrap_or_else(|| panic!("3 may start"));
        assert_eq!(
            offsets,
            vec![3, 4],
            "partition order: consecutive events, alone"
        );
        assert!(!q.has_room());
        assert!(q.finish(fourth));
        assert!(!q.finish(fourth));
        assert!(q.is_empty());
    }

    #[test]
    fn one_batch_takes_a_key_s_consecutive_events_in_order() {
        let mut q = KeyOrder::new(2);
        for (o, k) in [(0, b"a"), (1, b"a"), (2, b"b"), (3, b"a")] {
            q.push(o, Some(k));
        }
        let (_, offsets) = q.next_batch(3).unwrap_or_else(|| panic!("a batch"));
        assert_eq!(offsets, vec![0, 1, 2]);
        assert_eq!(q.next_batch(3), None, "a is running: 3 waits");
        assert_eq!(q.running(), 1);
        assert_eq!(q.waiting(), 1);
    }

    #[test]
    fn an_event_given_back_runs_alone_before_its_key_s_later_events() {
        let mut q = KeyOrder::new(4);
        for (o, k) in [(0, b"a"), (1, b"b"), (2, b"a"), (3, b"c")] {
            q.push(o, Some(k));
        }
        let (id, offsets) = q.next_batch(4).unwrap_or_else(|| panic!("a batch"));
        assert_eq!(offsets, vec![0, 1, 2, 3]);
        for (o, k) in [(0, b"a"), (1, b"b"), (2, b"a"), (3, b"c")] {
            q.retry_alone(o, Some(k));
        }
        assert!(q.finish(id));
        let batches: Vec<Vec<i64>> = std::iter::from_fn(|| q.next_batch(4).map(|b| b.1)).collect();
        assert_eq!(
            batches,
            vec![vec![0], vec![1], vec![3]],
            "each alone; a's second waits for its first"
        );
    }

    proptest! {
        /// Whatever the keys, batch sizes, the order batches finish in and
        /// the batches that give some events back: one key's events finish
        /// in offset order and are never in two batches at once, an event
        /// in partition order runs alone after every earlier one has
        /// finished, the bound holds, and every event finishes once.
        #[test]
        fn per_key_order_and_the_bound_hold(
            keys in proptest::collection::vec(proptest::option::weighted(0.9, 0u8..5), 1..80),
            picks in proptest::collection::vec((any::<prop::sample::Index>(), 1usize..5, proptest::option::weighted(0.2, any::<prop::sample::Index>())), 600),
            max in 1usize..6,
        ) {
            let mut q = KeyOrder::new(max);
            let key_bytes = |k: Option<u8>| k.map(|k| [k]);
            for (o, k) in keys.iter().enumerate() {
                q.push(o as i64, key_bytes(*k).as_ref().map(|k| k.as_slice()));
            }
            let key_of = |o: i64| keys[o as usize];
            let mut running: Vec<(BatchId, Vec<i64>)> = Vec::new();
            let mut started: HashSet<i64> = HashSet::new();
            let mut finished: Vec<i64> = Vec::new();
            let mut finished_of_key: HashMap<u8, Vec<i64>> = HashMap::new();
            let mut picks = picks.into_iter();
            while !q.is_empty() {
                let Some((pick, size, give_back)) = picks.next() else { break };
                while let Some((id, batch)) = q.next_batch(size) {
                    prop_assert!(!batch.is_empty() && batch.len() <= size);
                    prop_assert!(batch.windows(2).all(|w| w[0] < w[1]), "batch {:?} not in offset order", batch);
                    let others: Vec<i64> = running.iter().flat_map(|(_, b)| b.clone()).collect();
                    if batch.iter().any(|o| key_of(*o).is_none()) || others.iter().any(|o| key_of(*o).is_none()) {
                        prop_assert!(others.is_empty(), "batch {:?} beside {:?}, one in partition order", batch, others);
                    }
                    for &o in &batch {
                        prop_assert!(started.insert(o), "{} started twice", o);
                        match key_of(o) {
                            Some(k) => {
                                prop_assert!(others.iter().all(|r| key_of(*r) != Some(k)), "key {} in two batches", k);
                                prop_assert!(
                                    keys[..o as usize].iter().enumerate().all(|(i, k)| k.is_some() || finished.contains(&(i as i64)) || batch.contains(&(i as i64))),
                                    "{} passed an event in partition order", o
                                );
                            }
                            None => {
                                prop_assert!(
                                    (0..o).all(|e| finished.contains(&e) || batch.contains(&e)),
                                    "{} in partition order started before everything earlier finished", o
                                );
                            }
                        }
                    }
                    running.push((id, batch));
                    prop_assert!(running.len() <= max);
                }
                if running.is_empty() {
                    prop_assert!(false, "nothing runs and nothing may start");
                }
                let (id, batch) = running.swap_remove(pick.index(running.len()));
                // The batch finishes its events up to a point and gives the
                // rest back (or finishes all).
                let split = give_back.map_or(batch.len(), |g| g.index(batch.len()));
                for &o in &batch[split..] {
                    q.retry_alone(o, key_bytes(key_of(o)).as_ref().map(|k| k.as_slice()));
                    started.remove(&o);
                }
                prop_assert!(q.finish(id));
                for &o in &batch[..split] {
                    finished.push(o);
                    if let Some(k) = key_of(o) {
                        let list = finished_of_key.entry(k).or_default();
                        prop_assert!(list.last().is_none_or(|l| *l < o), "key {} finished {} after {:?}", k, o, list);
                        list.push(o);
                    }
                }
            }
            if q.is_empty() {
                finished.sort_unstable();
                prop_assert_eq!(finished, (0..keys.len() as i64).collect::<Vec<_>>());
            }
        }
    }
}
