//! Server-sent events: the stream both endpoints answer with when `stream` is set.

use crate::api_error::ApiError;
use crate::sequence::{Merged, Piece};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, StreamExt};
use genie_protocol::worker::{FinishReason, TokenOut};
use std::convert::Infallible;
use std::time::Duration;

/// One SSE event carrying `v` as JSON.
pub fn sse_json<T: serde::Serialize>(v: &T) -> Event {
    Event::default().data(serde_json::to_string(v).unwrap_or_default())
}

/// An error event in the OpenAI envelope (a sequence failed mid-stream).
fn sse_error(msg: &str) -> Event {
    let e = ApiError {
        message: msg.to_string(),
        ..ApiError::internal()
    };
    sse_json(&e.envelope())
}

enum Phase {
    Body,
    Usage,
    Done,
    End,
}

/// Events produced but not yet written to the client; past them the producer waits.
const STREAM_BUFFER: usize = 64;

/// Text deltas only: `f` sees each `Delta`'s text, tokens and finish; other pieces (a
/// prompt's scores) make no event.
pub fn deltas<F>(mut f: F) -> impl FnMut(u32, Piece) -> Vec<Event> + Send + 'static
where
    F: FnMut(u32, String, Vec<TokenOut>, Option<FinishReason>) -> Vec<Event> + Send + 'static,
{
    move |i, piece| match piece {
        Piece::Delta {
            text,
            tokens,
            finish,
        } => f(i, text, tokens, finish),
        _ => Vec::new(),
    }
}

/// The SSE body shared by both endpoints: `first` events, then `on_piece`'s events for
/// every piece (never a failure), an error event if a sequence fails, the usage event (`usage` gets the
/// completion and cached prompt tokens; `None` = not asked), and `[DONE]`.
///
/// A client that stops reading is bounded twice: at most [`STREAM_BUFFER`] events wait
/// for it here (the workers' event channels are bounded too), and once an event has
/// waited `stall` for room, the request's sequences are cancelled (their KV freed) and
/// the response ends.
pub fn sse_body<P, U>(
    merged: Merged,
    first: Vec<Event>,
    on_piece: P,
    usage: U,
    stall: Duration,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>
where
    P: FnMut(u32, Piece) -> Vec<Event> + Send + 'static,
    U: Fn(u64, u64) -> Option<Event> + Send + Sync + 'static,
{
    let state = (merged, Phase::Body, on_piece);
    let body = stream::unfold(state, move |(mut m, phase, mut on_piece)| {
        let ev = match phase {
            Phase::Usage => Some(usage(m.completion_tokens(), m.cached_tokens())),
            _ => None,
        };
        async move {
            match phase {
                Phase::Body => match m.next().await {
                    Some((_, Piece::Failed(msg))) => {
                        Some((vec![sse_error(&msg)], (m, Phase::Done, on_piece)))
                    }
                    Some((i, piece)) => {
                        let ev = on_piece(i, piece);
                        Some((ev, (m, Phase::Body, on_piece)))
                    }
                    None => Some((Vec::new(), (m, Phase::Usage, on_piece))),
                },
                Phase::Usage => Some((
                    ev.flatten().into_iter().collect(),
                    (m, Phase::Done, on_piece),
                )),
                Phase::Done => Some((
                    vec![Event::default().data("[DONE]")],
                    (m, Phase::End, on_piece),
                )),
                Phase::End => None,
            }
        }
    });
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(STREAM_BUFFER);
    tokio::spawn(async move {
        let mut body = std::pin::pin!(body.flat_map(stream::iter));
        loop {
            // A client that hangs up while nothing is produced (a prompt still prefilling)
            // closes `tx` (the SSE keep-alive notices): stop at once, which cancels.
            let ev = tokio::select! {
                ev = body.next() => ev,
                _ = tx.closed() => return,
            };
            let Some(ev) = ev else { return };
            match tokio::time::timeout(stall, tx.send(ev)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return, // the client hung up
                Err(_) => {
                    metrics::counter!("genie_stalled_streams_total").increment(1);
                    tracing::warn!(
                        stall_secs = stall.as_secs_f64(),
                        "a client stopped reading its stream: its sequences are cancelled"
                    );
                    return;
                }
            }
        }
    });
    let rest = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) });
    let events = stream::iter(first).chain(rest).map(Ok);
    // A comment line whenever the stream has been quiet for a second (a long prompt still
    // prefilling): clients skip it, and writing it is how a hang-up is noticed at all, so
    // the sequence is cancelled within about two seconds instead of at its first token.
    Sse::new(events).keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE))
}

const SSE_KEEP_ALIVE: Duration = Duration::from_secs(1);
