//! What to send and when: length distributions, synthetic prompts, traces and arrival
//! schedules. Pure and seeded, so a run's workload is reproducible and unit-tested.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, Normal};
use serde::Serialize;
use std::time::Duration;

/// A token-length distribution: `256`, `uniform:128:512`, `normal:256:64`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Lengths {
    Fixed(u32),
    Uniform { lo: u32, hi: u32 },
    Normal { mean: f64, std: f64 },
}

impl std::str::FromStr for Lengths {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let num = |v: &str, what: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| format!("`{v}` is not a non-negative number ({what} in `{s}`)"))
        };
        let parts: Vec<&str> = s.split(':').collect();
        let l = match parts.as_slice() {
            [n] => Lengths::Fixed(num(n, "length")? as u32),
            ["uniform", lo, hi] => {
                let (lo, hi) = (num(lo, "low")? as u32, num(hi, "high")? as u32);
                if lo > hi {
                    return Err(format!("uniform low {lo} is above high {hi}"));
                }
                Lengths::Uniform { lo, hi }
            }
            ["normal", m, sd] => Lengths::Normal {
                mean: num(m, "mean")?,
                std: num(sd, "std")?,
            },
            _ => {
                return Err(format!(
                    "`{s}`: expected N, uniform:LO:HI or normal:MEAN:STD"
                ))
            }
        };
        if l == Lengths::Fixed(0) {
            return Err("a length must be at least 1".into());
        }
        Ok(l)
    }
}

impl Lengths {
    /// One length, at least 1.
    pub fn sample(&self, rng: &mut StdRng) -> u32 {
        let v = match *self {
            Lengths::Fixed(n) => n,
            Lengths::Uniform { lo, hi } => rng.random_range(lo..=hi),
            Lengths::Normal { mean, std } => match Normal::new(mean, std) {
                Ok(d) => d.sample(rng).round().max(1.0) as u32,
                Err(_) => mean.round() as u32,
            },
        };
        v.max(1)
    }
}

/// Common English words, each a single token (with its leading space) for GPT-2-style BPE
/// vocabularies such as SmolLM2's: a prompt of `n` of them is `n` tokens there, and close
/// to `n` for other tokenizers. The server's `usage` gives the exact count either way.
const WORDS: &[&str] = &[
    "time",
    "people",
    "year",
    "way",
    "day",
    "man",
    "thing",
    "woman",
    "life",
    "child",
    "world",
    "school",
    "state",
    "family",
    "student",
    "group",
    "country",
    "problem",
    "hand",
    "part",
    "place",
    "case",
    "week",
    "company",
    "system",
    "program",
    "question",
    "work",
    "government",
    "number",
    "night",
    "point",
    "home",
    "water",
    "room",
    "mother",
    "area",
    "money",
    "story",
    "fact",
    "month",
    "lot",
    "right",
    "study",
    "book",
    "eye",
    "job",
    "word",
    "business",
    "issue",
    "side",
    "kind",
    "head",
    "house",
    "service",
    "friend",
    "father",
    "power",
    "hour",
    "game",
    "line",
    "end",
    "member",
    "law",
    "car",
    "city",
    "community",
    "name",
    "president",
    "team",
    "minute",
    "idea",
    "kid",
    "body",
    "information",
    "back",
    "parent",
    "face",
    "others",
    "level",
    "office",
    "door",
    "health",
    "person",
    "art",
    "war",
    "history",
    "party",
    "result",
    "change",
    "morning",
    "reason",
    "research",
    "girl",
    "guy",
    "moment",
    "air",
    "teacher",
    "force",
    "education",
];

/// A prompt of `tokens` words drawn with `rng` (distinct prompts defeat prefix caches).
pub fn synthetic_prompt(tokens: u32, rng: &mut StdRng) -> String {
    let mut s = String::with_capacity(tokens as usize * 7);
    for _ in 0..tokens {
        s.push(' ');
        s.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    s
}

/// A `shared_len`-token system prompt drawn from `seed` alone: the same text for every
/// request of a run (what a shared system prompt or tool list looks like to a prefix cache).
pub fn shared_prefix(tokens: u32, seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5EED_5A4E_D000_0001);
    synthetic_prompt(tokens, &mut rng)
}

/// A prompt of `tokens` words built from trace blocks: block `h` of `hash_ids` is
/// `block_tokens` words drawn from `h` alone, so requests that share leading hash ids share
/// that prefix word for word (Mooncake's traces mark shared prefixes this way). Truncated
/// to `tokens`; past the listed blocks, words from the request's own `rng`.
pub fn block_prompt(hash_ids: &[u64], tokens: u32, block_tokens: u32, rng: &mut StdRng) -> String {
    let mut s = String::with_capacity(tokens as usize * 7);
    let mut left = tokens;
    for &h in hash_ids {
        if left == 0 {
            break;
        }
        let n = block_tokens.min(left);
        let mut block = StdRng::seed_from_u64(h ^ 0xB10C_0000_0000_0000);
        s.push_str(&synthetic_prompt(n, &mut block));
        left -= n;
    }
    s.push_str(&synthetic_prompt(left, rng));
    s
}

/// What one request sends: an optional system prompt, then the conversation so far
/// (`user`/`assistant` messages, ending with a user message).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Prompt {
    pub system: Option<String>,
    pub messages: Vec<(&'static str, String)>,
}

impl Prompt {
    /// One user message after `system`.
    pub fn user(system: Option<&str>, text: String) -> Prompt {
        Prompt {
            system: system.map(str::to_string),
            messages: vec![("user", text)],
        }
    }

    /// The next turn: the assistant's `answer`, then a new user message.
    pub fn next_turn(&mut self, answer: String, text: String) {
        self.messages.push(("assistant", answer));
        self.messages.push(("user", text));
    }

    /// The whole prompt as one text, for the completions endpoint: the system prompt, then
    /// every message in order, so turn N's text starts with turn N-1's.
    pub fn as_text(&self) -> String {
        let mut s = self.system.clone().unwrap_or_default();
        for (_, m) in &self.messages {
            s.push_str(m);
        }
        s
    }
}

pub use genie_protocol::trace::{parse_trace, TraceEntry};

/// Poisson arrivals at `rate` requests per second: `n` send times from the start.
pub fn poisson_arrivals(rate: f64, n: usize, rng: &mut StdRng) -> Vec<Duration> {
    let exp = Exp::new(rate).expect("rate checked positive");
    let mut t = 0.0;
    (0..n)
        .map(|_| {
            t += exp.sample(rng);
            Duration::from_secs_f64(t)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_prefixes_and_trace_blocks_repeat_word_for_word() {
        assert_eq!(shared_prefix(40, 7), shared_prefix(40, 7));
        assert_ne!(shared_prefix(40, 7), shared_prefix(40, 8));
        assert_eq!(shared_prefix(40, 7).split_whitespace().count(), 40);
        let mut r1 = StdRng::seed_from_u64(1);
        let mut r2 = StdRng::seed_from_u64(2);
        // Two requests sharing blocks 10 and 11, then differing.
        let a = block_prompt(&[10, 11, 12], 40, 16, &mut r1);
        let b = block_prompt(&[10, 11, 99], 40, 16, &mut r2);
        let (wa, wb): (Vec<_>, Vec<_>) = (
            a.split_whitespace().collect(),
            b.split_whitespace().collect(),
        );
        assert_eq!((wa.len(), wb.len()), (40, 40));
        assert_eq!(wa[..32], wb[..32]);
        assert_ne!(wa[32..], wb[32..]);
        // Past the listed blocks, the request's own words.
        let c = block_prompt(&[10], 20, 16, &mut r1);
        assert_eq!(c.split_whitespace().take(16).collect::<Vec<_>>(), wa[..16]);
        assert_eq!(c.split_whitespace().count(), 20);
    }

    #[test]
    fn a_conversation_grows_by_each_answer_and_each_new_message() {
        let mut p = Prompt::user(Some(" sys"), " first".into());
        p.next_turn(" answer".into(), " second".into());
        assert_eq!(
            p.messages,
            vec![
                ("user", " first".into()),
                ("assistant", " answer".into()),
                ("user", " second".into())
            ]
        );
        assert_eq!(p.as_text(), " sys first answer second");
        assert_eq!(Prompt::user(None, " x".into()).as_text(), " x");
    }

    #[test]
    fn lengths_parse_sample_and_refuse_with_the_reason() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!("256".parse::<Lengths>().unwrap().sample(&mut rng), 256);
        let u: Lengths = "uniform:10:20".parse().unwrap();
        for _ in 0..100 {
            assert!((10..=20).contains(&u.sample(&mut rng)));
        }
        let n: Lengths = "normal:100:10".parse().unwrap();
        let mean = (0..2000).map(|_| n.sample(&mut rng) as f64).sum::<f64>() / 2000.0;
        assert!((mean - 100.0).abs() < 2.0, "{mean}");
        assert!("uniform:20:10"
            .parse::<Lengths>()
            .unwrap_err()
            .contains("above"));
        assert!("x"
            .parse::<Lengths>()
            .unwrap_err()
            .contains("not a non-negative number"));
        assert!("poisson:3"
            .parse::<Lengths>()
            .unwrap_err()
            .contains("expected"));
        assert!("0".parse::<Lengths>().unwrap_err().contains("at least 1"));
    }

    #[test]
    fn prompts_have_the_asked_word_count_and_differ() {
        let mut rng = StdRng::seed_from_u64(2);
        let a = synthetic_prompt(50, &mut rng);
        let b = synthetic_prompt(50, &mut rng);
        assert_eq!(a.split_whitespace().count(), 50);
        assert_ne!(a, b);
        assert!(a.starts_with(' '));
    }

    #[test]
    fn poisson_arrivals_have_the_asked_rate() {
        let mut rng = StdRng::seed_from_u64(3);
        let t = poisson_arrivals(20.0, 4000, &mut rng);
        assert!(t.windows(2).all(|w| w[0] <= w[1]));
        let rate = 4000.0 / t.last().unwrap().as_secs_f64();
        assert!((rate - 20.0).abs() < 1.0, "{rate}");
    }
}
