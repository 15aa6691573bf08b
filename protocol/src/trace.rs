//! Request traces: one JSON object per line, when each request arrives and how long its
//! prompt and answer are. `genie-loadtest --trace` replays one against a server;
//! `genie plan tune` and the serving simulator run one through the cost model.

use serde::{Deserialize, Serialize};

/// One line of a trace file (JSONL): when the request arrives (seconds from the start),
/// its input and output lengths in tokens, and optionally the hash ids of its prompt's
/// blocks (requests sharing leading ids share that prefix).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceEntry {
    pub arrival_s: f64,
    pub input_tokens: u32,
    pub output_tokens: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hash_ids: Vec<u64>,
}

/// A line of a Mooncake trace: `timestamp` in milliseconds, lengths, `hash_ids` of its
/// 512-token blocks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MooncakeEntry {
    timestamp: f64,
    input_length: u32,
    output_length: u32,
    #[serde(default)]
    hash_ids: Vec<u64>,
}

/// Parses a JSONL trace, in this tool's form or Mooncake's; errors name the line and why.
pub fn parse_trace(text: &str) -> Result<Vec<TraceEntry>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let e: TraceEntry = match serde_json::from_str::<TraceEntry>(line) {
            Ok(e) => e,
            Err(ours) => match serde_json::from_str::<MooncakeEntry>(line) {
                Ok(m) => TraceEntry {
                    arrival_s: m.timestamp / 1000.0,
                    input_tokens: m.input_length,
                    output_tokens: m.output_length,
                    hash_ids: m.hash_ids,
                },
                Err(_) => return Err(format!("trace line {}: {ours}", i + 1)),
            },
        };
        if !(e.arrival_s.is_finite() && e.arrival_s >= 0.0) {
            return Err(format!("trace line {}: arrival_s must be >= 0", i + 1));
        }
        if e.input_tokens == 0 || e.output_tokens == 0 {
            return Err(format!(
                "trace line {}: input_tokens and output_tokens must be >= 1",
                i + 1
            ));
        }
        out.push(e);
    }
    if out.is_empty() {
        return Err("the trace holds no requests".into());
    }
    out.sort_by(|a, b| a.arrival_s.total_cmp(&b.arrival_s));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mooncake_trace_lines_parse_with_their_hash_ids() {
        let t = parse_trace(
            "{\"timestamp\": 2500, \"input_length\": 1024, \"output_length\": 8, \"hash_ids\": [1, 2]}\n\
             {\"arrival_s\": 0.5, \"input_tokens\": 3, \"output_tokens\": 2, \"hash_ids\": [1]}\n",
        )
        .unwrap();
        assert_eq!(t[0].arrival_s, 0.5);
        assert_eq!(t[1].arrival_s, 2.5);
        assert_eq!((t[1].input_tokens, t[1].output_tokens), (1024, 8));
        assert_eq!(t[1].hash_ids, vec![1, 2]);
        let e = parse_trace("{\"timestamp\": 1}").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn traces_parse_sort_and_name_bad_lines() {
        let t = parse_trace(
            "{\"arrival_s\": 1.5, \"input_tokens\": 10, \"output_tokens\": 4}\n\n# comment\n{\"arrival_s\": 0.5, \"input_tokens\": 3, \"output_tokens\": 2}\n",
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].arrival_s, 0.5);
        let e = parse_trace("{\"arrival_s\": 1, \"input_tokens\": 0, \"output_tokens\": 4}")
            .unwrap_err();
        assert!(e.contains("line 1") && e.contains(">= 1"), "{e}");
        let e = parse_trace("{\"arrival\": 1}").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        assert!(parse_trace("\n").unwrap_err().contains("no requests"));
    }
}
