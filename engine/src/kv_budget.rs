//! KV memory accounting: a sequence holds a [`KvReservation`] for the KV blocks it has
//! taken, grown block by block as it runs ([`KvReservation::try_grow`]); a request or a
//! block that does not fit is refused with [`EngineError::KvCapacity`] instead of running
//! the process out of memory.

use crate::error::{EngineError, Result};
use std::sync::{Arc, Mutex};

#[derive(Debug)]
struct State {
    capacity: usize,
    used: usize,
}

/// A shared byte budget for KV caches. Cloning shares the same budget.
#[derive(Clone, Debug)]
pub struct KvBudget {
    state: Arc<Mutex<State>>,
}

/// Bytes held for one sequence; released when dropped.
#[derive(Debug)]
pub struct KvReservation {
    state: Arc<Mutex<State>>,
    bytes: usize,
}

impl KvBudget {
    pub fn new(capacity_bytes: usize) -> Self {
        KvBudget {
            state: Arc::new(Mutex::new(State {
                capacity: capacity_bytes,
                used: 0,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is two integers updated atomically under the lock: a panic elsewhere
        // cannot leave it half-written, so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `bytes` or refuses, saying how much was needed and how much is free.
    pub fn reserve(&self, bytes: usize) -> Result<KvReservation> {
        let mut r = KvReservation {
            state: Arc::clone(&self.state),
            bytes: 0,
        };
        r.try_grow(bytes)?;
        Ok(r)
    }

    pub fn capacity_bytes(&self) -> usize {
        self.lock().capacity
    }

    pub fn used_bytes(&self) -> usize {
        self.lock().used
    }

    /// Bytes not reserved: what the next reservation may take.
    pub fn free_bytes(&self) -> usize {
        let s = self.lock();
        s.capacity - s.used
    }

    /// Fraction of the capacity in use, 0.0..=1.0.
    pub fn usage_ratio(&self) -> f64 {
        let s = self.lock();
        if s.capacity == 0 {
            0.0
        } else {
            s.used as f64 / s.capacity as f64
        }
    }
}

impl KvReservation {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes `bytes` more from the budget, or refuses (as [`KvBudget::reserve`]) leaving
    /// this reservation as it was.
    pub fn try_grow(&mut self, bytes: usize) -> Result<()> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let free = s.capacity - s.used;
        if bytes > free {
            return Err(EngineError::KvCapacity {
                needed_bytes: bytes,
                available_bytes: free,
                capacity_bytes: s.capacity,
            });
        }
        s.used += bytes;
        self.bytes += bytes;
        Ok(())
    }

    /// Gives back up to `bytes` of this reservation.
    pub fn shrink(&mut self, bytes: usize) {
        let bytes = bytes.min(self.bytes);
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.used -= bytes;
        self.bytes -= bytes;
    }
}

impl Drop for KvReservation {
    fn drop(&mut self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.used -= self.bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_fit_refuse_and_release() {
        let b = KvBudget::new(100);
        let r1 = b.reserve(60).unwrap();
        assert_eq!(b.used_bytes(), 60);
        match b.reserve(50) {
            Err(EngineError::KvCapacity {
                needed_bytes: 50,
                available_bytes: 40,
                capacity_bytes: 100,
            }) => {}
            other => panic!("expected refusal, got {other:?}"),
        }
        let r2 = b.reserve(40).unwrap();
        assert_eq!(b.usage_ratio(), 1.0);
        drop(r1);
        assert_eq!(b.used_bytes(), 40);
        drop(r2);
        assert_eq!(b.used_bytes(), 0);
        let mut g = b.reserve(0).unwrap();
        g.try_grow(70).unwrap();
        assert!(g.try_grow(31).is_err());
        assert_eq!((g.bytes(), b.used_bytes()), (70, 70));
        g.shrink(20);
        assert_eq!((g.bytes(), b.used_bytes()), (50, 50));
        drop(g);
        assert_eq!(b.used_bytes(), 0);
        assert!(b.reserve(101).unwrap_err().to_string().contains("101"));
    }
}
