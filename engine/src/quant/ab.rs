//! A switch for in-process A/B trials of a kernel change: code under trial reads
//! [`variant`], and the decode example (`GENIE_AB=1`) flips it between adjacent rounds,
//! so both variants see the same neighbours on a shared host. 0 is the default and what
//! every caller outside a trial gets.

use std::sync::atomic::{AtomicUsize, Ordering};

static VARIANT: AtomicUsize = AtomicUsize::new(0);

/// The variant under trial (0 outside a trial).
#[inline(always)]
pub fn variant() -> usize {
    VARIANT.load(Ordering::Relaxed)
}

/// Selects the variant for the following work.
pub fn set_variant(v: usize) {
    VARIANT.store(v, Ordering::Relaxed)
}
