//! What a partition may commit when its events finish out of order (the
//! groundwork of key-ordered concurrency, issue 14; the lanes do not use
//! it yet).
//!
//! Events of one partition start in offset order but, once different keys
//! run side by side, finish in any order. The offset a consumer commits is
//! where it resumes after a crash or a rebalance, so it may only move to
//! the lowest offset not yet finished: everything below it is done, and
//! anything at or above it runs again (its marker makes the redone events
//! no-ops, so effects stay exactly once).

use std::collections::BTreeSet;

/// The events of one partition in flight, and the offset it may commit.
#[derive(Debug, Default, Clone)]
pub struct OffsetTracker {
    in_flight: BTreeSet<i64>,
    /// One past the highest offset started.
    next: Option<i64>,
}

/// An offset handed to [`OffsetTracker::start`] out of order, or finished
/// without having started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TrackError {
    /// Offsets start in increasing order.
    #[error("offset {offset} started after {last}: a partition's events start in offset order")]
    OutOfOrder {
        /// The offset.
        offset: i64,
        /// The highest one started before.
        last: i64,
    },
    /// Only a started event can finish.
    #[error("offset {0} finished without having started, or finished twice")]
    NotInFlight(i64),
}

impl OffsetTracker {
    /// An event at `offset` starts.
    pub fn start(&mut self, offset: i64) -> Result<(), TrackError> {
        if let Some(next) = self.next
            && offset < next
        {
            return Err(TrackError::OutOfOrder {
                offset,
                last: next - 1,
            });
        }
        self.in_flight.insert(offset);
        self.next = Some(offset.saturating_add(1));
        Ok(())
    }

    /// The event at `offset` finished (committed, a duplicate or
    /// dead-lettered).
    pub fn finish(&mut self, offset: i64) -> Result<(), TrackError> {
        if self.in_flight.remove(&offset) {
            Ok(())
        } else {
            Err(TrackError::NotInFlight(offset))
        }
    }

    /// The offset to commit: the lowest one in flight, or one past the
    /// highest started when none is; `None` before any event started.
    pub fn committable(&self) -> Option<i64> {
        self.in_flight.first().copied().or(self.next)
    }

    /// Events started and not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commits_only_below_the_lowest_unfinished_event() -> Result<(), TrackError> {
        let mut t = OffsetTracker::default();
        assert_eq!(t.committable(), None);
        for o in [10, 11, 14] {
            t.start(o)?;
        }
        t.finish(11)?;
        t.finish(14)?;
        assert_eq!(t.committable(), Some(10), "10 is unfinished");
        t.finish(10)?;
        assert_eq!(t.committable(), Some(15));
        assert_eq!(
            t.start(12),
            Err(TrackError::OutOfOrder {
                offset: 12,
                last: 14
            })
        );
        assert_eq!(t.finish(10), Err(TrackError::NotInFlight(10)));
        Ok(())
    }

    proptest! {
        /// Whatever order events finish in, the committable offset never
        /// passes an unfinished event, never moves back, and reaches one
        /// past the last event once all are done.
        #[test]
        fn never_commits_past_an_unfinished_event(
            gaps in proptest::collection::vec(1i64..4, 1..60),
            order in proptest::collection::vec(any::<prop::sample::Index>(), 60),
        ) {
            let mut offsets = Vec::new();
            let mut o = 0;
            for g in gaps {
                o += g;
                offsets.push(o);
            }
            let mut t = OffsetTracker::default();
            for &o in &offsets {
                prop_assert!(t.start(o).is_ok());
            }
            let mut unfinished = offsets.clone();
            let mut last = t.committable();
            for pick in order.iter().take(offsets.len()) {
                let done = unfinished.remove(pick.index(unfinished.len()));
                prop_assert!(t.finish(done).is_ok());
                let now = t.committable();
                if let (Some(now), Some(min)) = (now, unfinished.iter().min()) {
                    prop_assert!(now <= *min, "committable {} passes unfinished {}", now, min);
                }
                prop_assert!(now >= last, "committable moved back from {:?} to {:?}", last, now);
                last = now;
            }
            prop_assert!(unfinished.is_empty());
            prop_assert_eq!(t.committable(), offsets.last().map(|o| o + 1));
            prop_assert_eq!(t.in_flight(), 0);
        }
    }
}
