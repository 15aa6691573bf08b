//! The order in which waiting sequences get their turn to be placed: higher priority
//! first, then earlier arrival; a sequence that has waited `max_wait` goes before every
//! one that has not (ordered among those by arrival), so a low priority waits at most
//! about `max_wait` plus the time the aged sequences ahead of it take, and never starves.
//! Pure logic over explicit times; the dispatcher asks it whose turn it is.

use std::cmp::Reverse;
use tokio::time::{Duration, Instant};

/// A place in the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Slot(u64);

#[derive(Debug)]
struct Entry {
    slot: Slot,
    priority: i32,
    arrived: Instant,
    /// Being placed right now: not in line until it comes back (refused, no room).
    placing: bool,
}

#[derive(Debug)]
pub struct WaitQueue {
    entries: Vec<Entry>,
    next: u64,
    max_wait: Duration,
}

impl WaitQueue {
    pub fn new(max_wait: Duration) -> Self {
        WaitQueue {
            entries: Vec::new(),
            next: 0,
            max_wait,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Joins the queue.
    pub fn push(&mut self, priority: i32, now: Instant) -> Slot {
        let slot = Slot(self.next);
        self.next += 1;
        self.entries.push(Entry {
            slot,
            priority,
            arrived: now,
            placing: false,
        });
        slot
    }

    /// Leaves the queue (placed, refused or cancelled).
    pub fn remove(&mut self, slot: Slot) {
        self.entries.retain(|e| e.slot != slot);
    }

    /// Marks `slot` as being placed (out of line) or back in line.
    pub fn set_placing(&mut self, slot: Slot, placing: bool) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.slot == slot) {
            e.placing = placing;
        }
    }

    /// When `slot` ages past `max_wait` (it may then become the head).
    pub fn ages_at(&self, slot: Slot) -> Option<Instant> {
        self.entries
            .iter()
            .find(|e| e.slot == slot)
            .map(|e| e.arrived + self.max_wait)
    }

    /// Whose turn it is at `now`: the best ranked entry not being placed.
    pub fn head(&self, now: Instant) -> Option<Slot> {
        let max_wait = self.max_wait;
        self.entries
            .iter()
            .filter(|e| !e.placing)
            .max_by_key(|e| {
                let aged = now.saturating_duration_since(e.arrived) >= max_wait;
                (
                    aged,
                    if aged { 0 } else { e.priority },
                    Reverse(e.arrived),
                    Reverse(e.slot.0),
                )
            })
            .map(|e| e.slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_priority_first_then_arrival() {
        let t0 = Instant::now();
        let mut q = WaitQueue::new(Duration::from_secs(10));
        let low = q.push(0, t0);
        let high = q.push(5, t0 + Duration::from_millis(1));
        let high2 = q.push(5, t0 + Duration::from_millis(2));
        let now = t0 + Duration::from_millis(3);
        assert_eq!(q.head(now), Some(high));
        q.remove(high);
        assert_eq!(q.head(now), Some(high2));
        q.remove(high2);
        assert_eq!(q.head(now), Some(low));
        q.remove(low);
        assert_eq!(q.head(now), None);
        assert!(q.is_empty());
    }

    #[test]
    fn a_long_wait_outranks_any_priority() {
        let t0 = Instant::now();
        let wait = Duration::from_secs(10);
        let mut q = WaitQueue::new(wait);
        let low = q.push(-100, t0);
        assert_eq!(q.ages_at(low), Some(t0 + wait));
        let late = t0 + Duration::from_secs(9);
        let high = q.push(100, late);
        assert_eq!(q.head(late), Some(high));
        // At 10 s the low one has waited its bound: it goes before fresh high priorities.
        let aged = t0 + wait;
        let high2 = q.push(100, aged);
        assert_eq!(q.head(aged), Some(low));
        q.remove(low);
        assert_eq!(q.head(aged), Some(high));
        // Aged entries keep arrival order among themselves whatever their priority.
        let later = late + wait;
        assert_eq!(q.head(later), Some(high));
        q.remove(high);
        assert_eq!(q.head(later), Some(high2));
    }

    #[test]
    fn an_entry_being_placed_is_out_of_line_until_it_comes_back() {
        let t0 = Instant::now();
        let mut q = WaitQueue::new(Duration::from_secs(10));
        let a = q.push(1, t0);
        let b = q.push(0, t0);
        q.set_placing(a, true);
        assert_eq!(q.head(t0), Some(b));
        q.set_placing(a, false);
        assert_eq!(q.head(t0), Some(a));
        assert_eq!(q.len(), 2);
    }
}
