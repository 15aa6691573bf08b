//! Streaming-safe stop strings: text is released only once no stop string can still
//! begin inside it, so a client never receives text that a stop string later swallows.

/// Text safe to emit after one push, and the stop string that ended generation, if any.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StopOutput {
    pub text: String,
    pub stopped: Option<String>,
}

/// Feeds decoded pieces; holds back the shortest suffix that could start a stop string.
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
    stopped: bool,
}

impl StopMatcher {
    /// Empty stop strings are ignored.
    pub fn new(stop: Vec<String>) -> Self {
        StopMatcher {
            stops: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
            stopped: false,
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    pub fn push(&mut self, piece: &str) -> StopOutput {
        if self.stopped {
            return StopOutput::default();
        }
        self.pending.push_str(piece);
        // The stop string completed first wins (as if text arrived character by
        // character); if two complete at the same point, the one that starts earlier.
        let mut best: Option<(usize, &String)> = None;
        for s in &self.stops {
            if let Some(i) = self.pending.find(s.as_str()) {
                let end = i + s.len();
                best = match best {
                    Some((j, b)) if j + b.len() < end || (j + b.len() == end && j <= i) => {
                        Some((j, b))
                    }
                    _ => Some((i, s)),
                };
            }
        }
        if let Some((i, s)) = best {
            let stop = s.clone();
            let text = self.pending[..i].to_string();
            self.pending.clear();
            self.stopped = true;
            return StopOutput {
                text,
                stopped: Some(stop),
            };
        }
        let keep = self.held_suffix_len();
        let cut = self.pending.len() - keep;
        let text = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        StopOutput {
            text,
            stopped: None,
        }
    }

    /// End of generation without a stop match: everything still held.
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        std::mem::take(&mut self.pending)
    }

    /// Length in bytes of the longest suffix of `pending` that is a proper prefix of a stop string.
    fn held_suffix_len(&self) -> usize {
        let p = &self.pending;
        let mut best = 0;
        for s in &self.stops {
            let max = (s.len() - 1).min(p.len());
            for len in (best + 1..=max).rev() {
                let start = p.len() - len;
                if p.is_char_boundary(start) && s.starts_with(&p[start..]) {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, Option<String>) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let o = m.push(p);
            out.push_str(&o.text);
            if o.stopped.is_some() {
                return (out, o.stopped);
            }
        }
        out.push_str(&m.finish());
        (out, None)
    }

    #[test]
    fn stop_split_across_pieces_is_never_emitted() {
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(m.push("abc S").text, "abc ");
        assert_eq!(m.push("T").text, "");
        let o = m.push("OP and more");
        assert_eq!((o.text.as_str(), o.stopped.as_deref()), ("", Some("STOP")));
        assert_eq!(m.push("later").text, "");
        assert!(m.is_stopped());
    }

    #[test]
    fn near_miss_releases_held_text() {
        assert_eq!(run(&["Hello"], &["Hel", "p me"]), ("Help me".into(), None));
        assert_eq!(run(&["Hello"], &["say Hel"]), ("say Hel".into(), None));
    }

    #[test]
    fn earliest_and_unicode_stops() {
        assert_eq!(
            run(&["b", "ab"], &["xxab"]),
            ("xx".into(), Some("ab".into()))
        );
        assert_eq!(
            run(&["b", " bc"], &["a ", "b", "c"]),
            ("a ".into(), Some("b".into()))
        );
        assert_eq!(
            run(&["é!"], &["caf", "é", "!", "x"]),
            ("caf".into(), Some("é!".into()))
        );
    }

    #[test]
    fn matches_a_naive_reference_on_generated_cases() {
        let alphabet = ['a', 'b', 'é', ' '];
        let mut seed = 7u64;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        for _ in 0..500 {
            let text: String = (0..next(20)).map(|_| alphabet[next(4)]).collect();
            let stops: Vec<String> = (0..1 + next(2))
                .map(|_| (0..1 + next(3)).map(|_| alphabet[next(4)]).collect())
                .collect();
            let chars: Vec<char> = text.chars().collect();
            let mut pieces = Vec::new();
            let mut i = 0;
            while i < chars.len() {
                let k = 1 + next(3);
                pieces.push(
                    chars[i..(i + k).min(chars.len())]
                        .iter()
                        .collect::<String>(),
                );
                i += k;
            }
            let refs: Vec<&str> = stops.iter().map(String::as_str).collect();
            let piece_refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
            let (got, _) = run(&refs, &piece_refs);
            // Reference: the stop completed first, earliest start on ties.
            let cut = stops
                .iter()
                .filter_map(|s| text.find(s.as_str()).map(|i| (i + s.len(), i)))
                .min();
            let want = cut.map_or(text.clone(), |(_, c)| text[..c].to_string());
            assert_eq!(got, want, "text {text:?} stops {stops:?} pieces {pieces:?}");
        }
    }
}
