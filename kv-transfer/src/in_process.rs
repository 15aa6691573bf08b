//! The in-process transport: endpoints are delivery functions registered by receivers in
//! the same process (the decode worker pushes messages into its own input queue).

use crate::{KvMessage, KvSink, KvTransport, TransferError};
use genie_protocol::TransferId;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

/// Delivers one message; returns false when the receiver is gone.
pub type Deliver = Arc<dyn Fn(KvMessage) -> bool + Send + Sync>;

/// Endpoints in this process, by name. Cloning shares the registry.
#[derive(Clone, Default)]
pub struct InProcessTransport {
    endpoints: Arc<RwLock<HashMap<String, Deliver>>>,
}

impl InProcessTransport {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `name` reachable; a later registration under the same name replaces it.
    pub fn register(&self, name: &str, deliver: Deliver) {
        self.endpoints
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), deliver);
    }

    pub fn unregister(&self, name: &str) {
        self.endpoints
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }
}

impl KvTransport for InProcessTransport {
    fn open(&self, endpoint: &str, transfer: TransferId) -> Result<Box<dyn KvSink>, TransferError> {
        let deliver = self
            .endpoints
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(endpoint)
            .cloned()
            .ok_or_else(|| TransferError::UnknownEndpoint(endpoint.to_string()))?;
        Ok(Box::new(InProcessSink {
            endpoint: endpoint.to_string(),
            transfer,
            deliver,
            started: None,
            bytes: 0,
            done: false,
        }))
    }

    fn kind(&self) -> &'static str {
        "in_process"
    }
}

struct InProcessSink {
    endpoint: String,
    transfer: TransferId,
    deliver: Deliver,
    started: Option<Instant>,
    bytes: u64,
    done: bool,
}

impl InProcessSink {
    fn push(&mut self, m: KvMessage) -> Result<(), TransferError> {
        if (self.deliver)(m) {
            Ok(())
        } else {
            self.done = true;
            Err(TransferError::EndpointClosed {
                endpoint: self.endpoint.clone(),
                transfer: self.transfer,
            })
        }
    }
}

impl KvSink for InProcessSink {
    fn transfer(&self) -> TransferId {
        self.transfer
    }

    fn send_data(&mut self, m: KvMessage) -> Result<(), TransferError> {
        self.started.get_or_insert_with(Instant::now);
        let n = crate::wire::payload(&m).len() as u64;
        self.push(m)?;
        self.bytes += n;
        Ok(())
    }

    fn complete(mut self: Box<Self>, trailer: Vec<u8>) -> Result<(), TransferError> {
        let r = self.push(KvMessage::Complete {
            transfer: self.transfer,
            trailer,
        });
        self.done = true;
        if r.is_ok() {
            metrics::counter!("genie_kv_transfer_bytes_total", "transport" => "in_process")
                .increment(self.bytes);
            if let Some(t) = self.started {
                metrics::histogram!("genie_kv_transfer_seconds", "transport" => "in_process")
                    .record(t.elapsed().as_secs_f64());
            }
        }
        r
    }

    fn abort(mut self: Box<Self>, reason: &str) {
        self.done = true;
        let _ = (self.deliver)(KvMessage::Abort {
            transfer: self.transfer,
            reason: reason.to_string(),
        });
    }
}

impl Drop for InProcessSink {
    fn drop(&mut self) {
        if !self.done {
            let _ = (self.deliver)(KvMessage::Abort {
                transfer: self.transfer,
                reason: "sender dropped the transfer".into(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LayerShape;
    use std::sync::mpsc;

    fn endpoint(t: &InProcessTransport, name: &str) -> mpsc::Receiver<KvMessage> {
        let (tx, rx) = mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        t.register(name, Arc::new(move |m| tx.lock().unwrap().send(m).is_ok()));
        rx
    }

    fn meta(layer: u32) -> LayerShape {
        LayerShape {
            layer,
            n_layers: 2,
            dtype: crate::DTYPE_F16,
            kv_heads: 1,
            head_dim: 1,
            token_start: 0,
            token_count: 1,
        }
    }

    #[test]
    fn layers_then_trailer_arrive_in_order() {
        let t = InProcessTransport::new();
        let rx = endpoint(&t, "d0");
        let mut s = t.open("d0", TransferId(7)).unwrap();
        s.send_layer(meta(0), vec![1, 2]).unwrap();
        s.send_layer(meta(1), vec![3]).unwrap();
        s.complete(vec![9]).unwrap();
        let got: Vec<_> = rx.try_iter().collect();
        assert_eq!(
            got,
            vec![
                KvMessage::Layer {
                    transfer: TransferId(7),
                    meta: meta(0),
                    bytes: vec![1, 2]
                },
                KvMessage::Layer {
                    transfer: TransferId(7),
                    meta: meta(1),
                    bytes: vec![3]
                },
                KvMessage::Complete {
                    transfer: TransferId(7),
                    trailer: vec![9]
                },
            ]
        );
    }

    #[test]
    fn a_dropped_sink_aborts_and_unknown_endpoints_are_refused() {
        let t = InProcessTransport::new();
        let rx = endpoint(&t, "d0");
        {
            let mut s = t.open("d0", TransferId(1)).unwrap();
            s.send_layer(meta(0), vec![1]).unwrap();
        }
        let got: Vec<_> = rx.try_iter().collect();
        assert!(matches!(
            got.last(),
            Some(KvMessage::Abort {
                transfer: TransferId(1),
                ..
            })
        ));
        assert_eq!(
            t.open("nope", TransferId(2)).err(),
            Some(TransferError::UnknownEndpoint("nope".into()))
        );
    }

    #[test]
    fn a_gone_receiver_is_an_error_not_a_hang() {
        let t = InProcessTransport::new();
        drop(endpoint(&t, "d0"));
        let mut s = t.open("d0", TransferId(3)).unwrap();
        assert!(matches!(
            s.send_layer(meta(0), vec![1]),
            Err(TransferError::EndpointClosed { .. })
        ));
    }
}
