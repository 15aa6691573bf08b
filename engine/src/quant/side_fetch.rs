//! Memory a compute-bound matmul pulls toward the cache beside its own work.
//!
//! A batched decode step alternates compute-bound matmuls (sixteen tokens against each
//! weight strip) with memory-bound attention (every sequence's K/V rows, read once, from
//! memory: the weights streamed since the last step have evicted them). Issuing the next
//! layer's K/V lines as prefetches while the gate/up matmul computes moves that memory
//! traffic into a region that leaves bandwidth idle. Prefetches change no value, so the
//! output is bit-identical with or without them.

/// Cache lines to fetch, as spans of whole 64-byte lines.
#[derive(Default, Debug)]
pub struct SideFetch {
    spans: Vec<(usize, usize)>, // (address of the first line, lines)
    lines: usize,
    budget: Option<usize>, // most lines
}

const LINE: usize = 64;

impl SideFetch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fetches at most `bytes` (whole lines); spans added past it are cut or dropped.
    pub fn with_budget(bytes: usize) -> Self {
        SideFetch {
            budget: Some(bytes / LINE),
            ..Self::default()
        }
    }

    /// Adds the lines that cover `data`.
    pub fn add<T>(&mut self, data: &[T]) {
        let bytes = std::mem::size_of_val(data);
        if bytes == 0 {
            return;
        }
        let start = data.as_ptr() as usize;
        let first = start & !(LINE - 1);
        let mut n = (start + bytes - first).div_ceil(LINE);
        if let Some(most) = self.budget {
            n = n.min(most - self.lines);
        }
        if n == 0 {
            return;
        }
        self.spans.push((first, n));
        self.lines += n;
    }

    /// Lines in all spans.
    pub fn lines(&self) -> usize {
        self.lines
    }

    /// Share `part` of `parts` near-equal shares of the lines, in order.
    pub(crate) fn share(&self, part: usize, parts: usize) -> SideCursor<'_> {
        let (a, b) = (
            part * self.lines / parts.max(1),
            (part + 1) * self.lines / parts.max(1),
        );
        let mut cursor = SideCursor {
            spans: &self.spans,
            span: 0,
            off: 0,
            left: b.saturating_sub(a),
        };
        // Skip to line `a`.
        let mut skip = a;
        while cursor.span < self.spans.len() && skip >= self.spans[cursor.span].1 {
            skip -= self.spans[cursor.span].1;
            cursor.span += 1;
        }
        cursor.off = skip;
        cursor
    }
}

/// One task's share of a [`SideFetch`], issued a few lines at a time.
pub(crate) struct SideCursor<'a> {
    spans: &'a [(usize, usize)],
    span: usize,
    off: usize,
    left: usize,
}

impl SideCursor<'_> {
    /// Lines not yet issued.
    pub(crate) fn left(&self) -> usize {
        self.left
    }

    /// Issues the next `n` lines (fewer at the end of the share).
    #[inline]
    pub(crate) fn issue(&mut self, n: usize) {
        self.each(n, prefetch)
    }

    /// Calls `f` with the address of each of the next `n` lines.
    fn each(&mut self, n: usize, mut f: impl FnMut(usize)) {
        let mut n = n.min(self.left);
        self.left -= n;
        while n > 0 {
            let Some(&(first, len)) = self.spans.get(self.span) else {
                return;
            };
            let take = n.min(len - self.off);
            for i in self.off..self.off + take {
                f(first + i * LINE);
            }
            n -= take;
            self.off += take;
            if self.off == len {
                self.span += 1;
                self.off = 0;
            }
        }
    }

    /// Issues what is left.
    pub(crate) fn finish(&mut self) {
        self.issue(self.left);
    }
}

#[inline(always)]
pub(crate) fn prefetch(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(addr as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_cuts_the_spans_it_cannot_hold() {
        let a = vec![0u8; 64 * 100];
        let mut f = SideFetch::with_budget(64 * 150);
        f.add(&a);
        f.add(&a);
        f.add(&a);
        assert_eq!(f.lines(), 150);
        let mut seen = 0;
        f.share(0, 1).each(usize::MAX, |_| seen += 1);
        assert_eq!(seen, 150);
    }

    /// Every line of every span is issued exactly once across the shares.
    #[test]
    fn shares_cover_every_line_once() {
        let a = vec![0u8; 1000];
        let b = vec![0u16; 77];
        let mut f = SideFetch::new();
        f.add(&a);
        f.add(&b[..0]);
        f.add(&b);
        let want = f.lines();
        // The distinct lines of each span (two spans may share a line; each is fetched).
        let lines_of = |p: *const u8, bytes: usize| {
            let mut v: Vec<usize> = (0..bytes)
                .map(|i| p.wrapping_add(i) as usize & !63)
                .collect();
            v.dedup();
            v
        };
        let mut all = lines_of(a.as_ptr(), a.len());
        all.extend(lines_of(b.as_ptr() as *const u8, 2 * b.len()));
        all.sort();
        assert_eq!(all.len(), want);
        for parts in [1, 2, 3, 7, 64, 500] {
            let mut seen = Vec::new();
            for p in 0..parts {
                let mut c = f.share(p, parts);
                c.each(1, |l| seen.push(l));
                c.each(usize::MAX, |l| seen.push(l));
                assert_eq!(c.left(), 0);
            }
            seen.sort();
            assert_eq!(seen, all, "{parts} parts");
        }
    }
}
