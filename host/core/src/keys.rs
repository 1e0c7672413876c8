//! Which of a partition's waiting events may start now, when events of
//! different keys run side by side (the groundwork of key-ordered
//! concurrency, issue 14; the lanes do not use it yet): events of one key
//! start in offset order, one at a time; an event without a key falls back
//! to partition order (it starts alone, after everything before it, and
//! everything after it waits for it); at most `max_in_flight` at once.

use std::collections::{HashSet, VecDeque};

/// A partition's waiting and running events, by key.
#[derive(Debug, Clone)]
pub struct KeyOrder {
    waiting: VecDeque<(i64, Option<Vec<u8>>)>,
    running: Vec<(i64, Option<Vec<u8>>)>,
    max_in_flight: usize,
}

impl KeyOrder {
    /// At most `max_in_flight` events running at once (at least one).
    pub fn new(max_in_flight: usize) -> Self {
        Self {
            waiting: VecDeque::new(),
            running: Vec::new(),
            max_in_flight: max_in_flight.max(1),
        }
    }

    /// An event arrives, in offset order.
    pub fn push(&mut self, offset: i64, key: Option<Vec<u8>>) {
        self.waiting.push_back((offset, key));
    }

    /// The next event that may start now, taken off the waiting list;
    /// `None` when none may.
    pub fn next_ready(&mut self) -> Option<i64> {
        if self.running.len() >= self.max_in_flight {
            return None;
        }
        // A keyless event running holds everything.
        if self.running.iter().any(|(_, k)| k.is_none()) {
            return None;
        }
        let mut busy: HashSet<&[u8]> = self
            .running
            .iter()
            .filter_map(|(_, k)| k.as_deref())
            .collect();
        let mut pick = None;
        for (i, (_, key)) in self.waiting.iter().enumerate() {
            match key {
                // Partition order: it starts alone, and nothing behind it
                // may pass it.
                None => {
                    if i == 0 && self.running.is_empty() {
                        pick = Some(i);
                    }
                    break;
                }
                Some(k) => {
                    if busy.insert(k.as_slice()) {
                        pick = Some(i);
                        break;
                    }
                    // The key is busy (running, or an earlier waiting
                    // event has it): its later events wait in order.
                }
            }
        }
        let event = self.waiting.remove(pick?)?;
        let offset = event.0;
        self.running.push(event);
        Some(offset)
    }

    /// The event at `offset` finished; `false` if it was not running.
    pub fn finish(&mut self, offset: i64) -> bool {
        match self.running.iter().position(|(o, _)| *o == offset) {
            Some(i) => {
                self.running.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// Events waiting and running.
    pub fn len(&self) -> usize {
        self.waiting.len() + self.running.len()
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
    use std::collections::HashMap;

    #[test]
    fn keys_run_side_by_side_and_a_keyless_event_alone() {
        let mut q = KeyOrder::new(8);
        q.push(0, Some(b"a".to_vec()));
        q.push(1, Some(b"b".to_vec()));
        q.push(2, Some(b"a".to_vec()));
        q.push(3, None);
        q.push(4, Some(b"c".to_vec()));
        assert_eq!(q.next_ready(), Some(0));
        assert_eq!(q.next_ready(), Some(1));
        assert_eq!(
            q.next_ready(),
            None,
            "a's second event waits for its first; 3 holds 4"
        );
        assert!(q.finish(0));
        assert_eq!(q.next_ready(), Some(2));
        assert!(q.finish(1));
        assert!(q.finish(2));
        assert_eq!(q.next_ready(), Some(3));
        assert_eq!(q.next_ready(), None, "nothing runs beside a keyless event");
        assert!(q.finish(3));
        assert_eq!(q.next_ready(), Some(4));
        assert!(!q.finish(3));
    }

    proptest! {
        /// Whatever the keys and the order events finish in: one key's
        /// events start in offset order and never two at once, a keyless
        /// event runs alone and in partition order, the bound holds, and
        /// every event runs.
        #[test]
        fn per_key_order_and_the_bound_hold(
            keys in proptest::collection::vec(proptest::option::weighted(0.9, 0u8..5), 1..80),
            picks in proptest::collection::vec(any::<prop::sample::Index>(), 400),
            max in 1usize..6,
        ) {
            let mut q = KeyOrder::new(max);
            for (o, k) in keys.iter().enumerate() {
                q.push(o as i64, k.map(|k| vec![k]));
            }
            let mut running: Vec<i64> = Vec::new();
            let mut started: Vec<i64> = Vec::new();
            let mut last_of_key: HashMap<Option<u8>, i64> = HashMap::new();
            let mut picks = picks.into_iter();
            while !q.is_empty() {
                while let Some(o) = q.next_ready() {
                    let key = keys[o as usize];
                    if let Some(k) = key {
                        prop_assert!(
                            running.iter().all(|r| keys[*r as usize] != Some(k)),
                            "two events of key {} at once", k
                        );
                    } else {
                        prop_assert!(running.is_empty(), "keyless event {} beside others", o);
                        prop_assert!(started.iter().all(|s| *s < o), "keyless event {} started late", o);
                        prop_assert!(started.len() == o as usize, "keyless event {} passed an earlier one", o);
                    }
                    if running.iter().any(|r| keys[*r as usize].is_none()) {
                        prop_assert!(false, "event {} started beside a keyless one", o);
                    }
                    if let Some(prev) = last_of_key.insert(key, o) {
                        prop_assert!(key.is_none() || prev < o, "key {:?} out of order: {} after {}", key, o, prev);
                    }
                    // Nothing starts past a waiting keyless event.
                    if let Some(first_keyless) = keys.iter().enumerate().find(|(i, k)| k.is_none() && !started.contains(&(*i as i64)) && (*i as i64) != o) {
                        prop_assert!((first_keyless.0 as i64) > o, "event {} passed keyless event {}", o, first_keyless.0);
                    }
                    running.push(o);
                    started.push(o);
                    prop_assert!(running.len() <= max);
                }
                prop_assert!(!running.is_empty(), "nothing runs and nothing may start");
                let i = picks.next().map_or(0, |p| p.index(running.len()));
                let done = running.swap_remove(i);
                prop_assert!(q.finish(done));
            }
            prop_assert_eq!(started.len(), keys.len());
        }
    }
}
