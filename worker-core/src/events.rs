//! A sequence's event channel and the rule that turns a step's logits into its next event.

use genie_engine::model::TokenScores;
use genie_engine::sampling::{Sampled, Sampler};
use genie_grammar::{GrammarError, LazyGrammars};
use genie_protocol::worker::{events_capacity, FailureCode, FinishReason, SeqEvent, TokenOut};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::{channel, Receiver, Sender};

/// The sending end of one sequence's events, used from compute threads. The channel is
/// bounded at [`events_capacity`] for the sequence's `max_tokens`, which is every event the
/// sequence can send, so a send never waits on a slow client and never finds it full.
#[derive(Clone, Debug)]
pub struct EventSender(Sender<SeqEvent>);

/// A bounded channel for a sequence that generates at most `max_tokens` tokens.
pub fn event_channel(max_tokens: usize) -> (EventSender, Receiver<SeqEvent>) {
    let (tx, rx) = channel(events_capacity(max_tokens));
    (EventSender(tx), rx)
}

impl EventSender {
    /// Sends without waiting; false when the client is gone. A full channel (more events
    /// than the sequence's bound: a bug) counts as gone, so the sequence ends.
    pub fn send(&self, ev: SeqEvent) -> bool {
        match self.0.try_send(ev) {
            Ok(()) => true,
            Err(TrySendError::Closed(_)) => false,
            Err(TrySendError::Full(_)) => {
                tracing::error!("a sequence's event channel is full; ending the sequence");
                false
            }
        }
    }

    /// The receiver was dropped: the client went away.
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

/// A sampled token as the client sees it.
pub fn token_out(s: &Sampled) -> TokenOut {
    TokenOut {
        token: s.token,
        logprob: s.logprob,
        top_logprobs: s
            .top_logprobs
            .iter()
            .map(|t| (t.token, t.logprob))
            .collect(),
    }
}

/// The scores a prompt's prefill asks for (the sampler's `prompt_logprobs`), None when it
/// asks for none. `fresh` is false for a sequence prefilled again after it generated
/// tokens (preempted): its prompt's scores were sent already.
pub fn prompt_scores(sampler: &Sampler, fresh: bool) -> Option<TokenScores> {
    let top = sampler.params().prompt_logprobs.filter(|_| fresh)?;
    Some(TokenScores {
        top,
        scored: Vec::new(),
    })
}

/// Sends a prefilled prompt's scores, if it asked for them.
pub fn send_prompt_scores(events: &EventSender, scores: Option<TokenScores>) {
    if let Some(s) = scores {
        events.send(SeqEvent::PromptLogprobs(
            s.scored.iter().map(token_out).collect(),
        ));
    }
}

/// What a sequence does after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Feed this token next.
    Continue(u32),
    /// The sequence ended (finished, or its client is gone); nothing more is sent.
    Ended,
}

/// The token rule every worker applies to a sequence's logits: sample (under the
/// sequence's grammar, if it has one, compiled from `grammars`); a stop token
/// finishes the sequence (`stop`) without being sent; otherwise the token is recorded and
/// sent, and reaching `max_tokens` finishes it (`length`). `generated` counts the tokens
/// sent so far, including this one.
pub fn next_token(
    sampler: &mut Sampler,
    logits: &mut [f32],
    stop_token_ids: &[u32],
    generated: &mut usize,
    max_tokens: usize,
    events: &EventSender,
    grammars: Option<&LazyGrammars>,
) -> Next {
    let grammar_failed = |e: GrammarError| {
        // The gateway compiled the grammar before admitting the request, so this is a
        // worker-side fault: the details go to the log, the client gets an error.
        tracing::warn!(error = %e, "constrained decoding failed");
        events.send(SeqEvent::failed(
            FailureCode::Internal,
            "constrained decoding failed",
        ));
        Next::Ended
    };
    let s = match sampler.sample_within(logits, grammars, max_tokens.saturating_sub(*generated)) {
        Ok(s) => s,
        Err(e) => return grammar_failed(e),
    };
    if stop_token_ids.contains(&s.token) {
        events.send(SeqEvent::Finished(FinishReason::Stop));
        return Next::Ended;
    }
    if let Err(e) = sampler.record(s.token) {
        return grammar_failed(e);
    }
    *generated += 1;
    if !events.send(SeqEvent::Token(token_out(&s))) {
        return Next::Ended;
    }
    if *generated >= max_tokens {
        events.send(SeqEvent::Finished(FinishReason::Length));
        return Next::Ended;
    }
    Next::Continue(s.token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use genie_engine::sampling::SamplingParams;

    fn greedy() -> Sampler {
        Sampler::new(SamplingParams::greedy(), 1)
    }

    fn drain(rx: &mut Receiver<SeqEvent>) -> Vec<SeqEvent> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[test]
    fn tokens_then_length_at_max_tokens() {
        let (tx, mut rx) = event_channel(2);
        let mut s = greedy();
        let mut n = 0;
        let mut logits = vec![0.0, 5.0, 1.0];
        assert_eq!(
            next_token(&mut s, &mut logits.clone(), &[], &mut n, 2, &tx, None),
            Next::Continue(1)
        );
        assert_eq!(
            next_token(&mut s, &mut logits, &[], &mut n, 2, &tx, None),
            Next::Ended
        );
        let ev = drain(&mut rx);
        assert_eq!(ev.len(), 3);
        assert!(matches!(ev[0], SeqEvent::Token(ref t) if t.token == 1));
        assert_eq!(ev[2], SeqEvent::Finished(FinishReason::Length));
        assert_eq!(n, 2);
    }

    #[test]
    fn a_stop_token_finishes_without_being_sent() {
        let (tx, mut rx) = event_channel(8);
        let mut n = 0;
        let next = next_token(&mut greedy(), &mut [0.0, 5.0], &[1], &mut n, 8, &tx, None);
        assert_eq!(next, Next::Ended);
        assert_eq!(drain(&mut rx), vec![SeqEvent::Finished(FinishReason::Stop)]);
        assert_eq!(n, 0);
    }

    #[test]
    fn a_gone_client_ends_the_sequence_and_the_bound_holds_every_event() {
        let (tx, rx) = event_channel(4);
        drop(rx);
        let mut n = 0;
        let next = next_token(&mut greedy(), &mut [0.0, 5.0], &[], &mut n, 4, &tx, None);
        assert_eq!(next, Next::Ended);
        assert!(tx.is_closed());
        // Running + one token per max_tokens + a final event fit without waiting.
        let (tx, _rx) = event_channel(4);
        for _ in 0..events_capacity(4) {
            assert!(tx.send(SeqEvent::Running));
        }
        assert!(!tx.send(SeqEvent::Running), "beyond the bound is refused");
    }
}
