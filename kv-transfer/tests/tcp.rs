//! The TCP transport over real loopback sockets: good transfers arrive whole, bad frames
//! close the connection and abort the transfer, never a partial sequence.

use genie_kv_transfer::{
    tcp, wire, KvMessage, KvTransport, LayerShape, TcpTransport, TransferRegistry, DTYPE_F16,
};
use genie_protocol::TransferId;
use std::io::Write;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

fn meta(layer: u32) -> LayerShape {
    LayerShape {
        layer,
        n_layers: 2,
        dtype: DTYPE_F16,
        kv_heads: 1,
        head_dim: 2,
        token_start: 0,
        token_count: 3,
    }
}

/// Starts a receiver on 127.0.0.1:0; returns its address, registry and delivered messages.
fn receiver(
    rt: &tokio::runtime::Runtime,
    stall: Duration,
) -> (String, TransferRegistry, mpsc::Receiver<KvMessage>) {
    receiver_with(rt, TransferRegistry::new(), stall)
}

/// A TCP KV receiver serving `registry` on loopback: its address, the registry, and what
/// it delivers.
fn receiver_with(
    rt: &tokio::runtime::Runtime,
    registry: TransferRegistry,
    stall: Duration,
) -> (String, TransferRegistry, mpsc::Receiver<KvMessage>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let deliver: genie_kv_transfer::Deliver = Arc::new(move |m| tx.lock().unwrap().send(m).is_ok());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    rt.spawn(tcp::serve(
        listener,
        registry.clone(),
        deliver,
        stall,
        tokio_util::sync::CancellationToken::new(),
    ));
    (addr, registry, rx)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn a_transfer_arrives_layer_by_layer_then_completes() {
    let rt = rt();
    let (addr, reg, rx) = receiver(&rt, Duration::from_secs(5));
    reg.expect(TransferId(5), 48, Duration::from_secs(30));
    let mut s = TcpTransport::default().open(&addr, TransferId(5)).unwrap();
    s.send_layer(meta(0), vec![1; 24]).unwrap();
    s.send_layer(meta(1), vec![2; 24]).unwrap();
    s.complete(b"trailer".to_vec()).unwrap();
    let got: Vec<KvMessage> = (0..3).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();
    assert_eq!(
        got[0],
        KvMessage::Layer {
            transfer: TransferId(5),
            meta: meta(0),
            bytes: vec![1; 24]
        }
    );
    assert_eq!(
        got[1],
        KvMessage::Layer {
            transfer: TransferId(5),
            meta: meta(1),
            bytes: vec![2; 24]
        }
    );
    assert_eq!(
        got[2],
        KvMessage::Complete {
            transfer: TransferId(5),
            trailer: b"trailer".to_vec()
        }
    );
    assert!(reg.is_empty(), "a completed transfer is forgotten");
}

#[test]
fn unknown_transfers_are_refused_and_nothing_is_delivered() {
    let rt = rt();
    let (addr, _reg, rx) = receiver(&rt, Duration::from_secs(5));
    let mut s = TcpTransport::default().open(&addr, TransferId(99)).unwrap();
    let _ = s.send_layer(meta(0), vec![0; 24]);
    let _ = s.complete(Vec::new());
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
}

#[test]
fn corrupt_oversize_and_truncated_transfers_abort_instead_of_admitting_a_partial_sequence() {
    let rt = rt();
    let (addr, reg, rx) = receiver(&rt, Duration::from_secs(5));
    let layer = |t: u64, fill: u8| {
        wire::encode(&KvMessage::Layer {
            transfer: TransferId(t),
            meta: meta(0),
            bytes: vec![fill; 24],
        })
    };

    // Corrupted payload: the first good layer arrives, the corrupt one aborts.
    reg.expect(TransferId(1), 1000, Duration::from_secs(30));
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.write_all(&layer(1, 7)).unwrap();
    let mut bad = layer(1, 8);
    let n = bad.len();
    bad[n - 1] ^= 0xff;
    c.write_all(&bad).unwrap();
    assert!(matches!(
        rx.recv_timeout(WAIT).unwrap(),
        KvMessage::Layer { .. }
    ));
    match rx.recv_timeout(WAIT).unwrap() {
        KvMessage::Abort { transfer, reason } => {
            assert_eq!(transfer, TransferId(1));
            assert!(reason.contains("checksum"), "{reason}");
        }
        m => panic!("expected abort, got {m:?}"),
    }

    // More bytes than the reservation allows.
    reg.expect(TransferId(2), 24, Duration::from_secs(30));
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.write_all(&layer(2, 1)).unwrap();
    c.write_all(&layer(2, 1)).unwrap();
    assert!(matches!(
        rx.recv_timeout(WAIT).unwrap(),
        KvMessage::Layer { .. }
    ));
    assert!(matches!(
        rx.recv_timeout(WAIT).unwrap(),
        KvMessage::Abort {
            transfer: TransferId(2),
            ..
        }
    ));

    // The sender goes away after one layer (a prefill worker dying mid-transfer).
    reg.expect(TransferId(3), 1000, Duration::from_secs(30));
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.write_all(&layer(3, 1)).unwrap();
    c.write_all(&layer(3, 1)[..20]).unwrap();
    drop(c);
    assert!(matches!(
        rx.recv_timeout(WAIT).unwrap(),
        KvMessage::Layer { .. }
    ));
    match rx.recv_timeout(WAIT).unwrap() {
        KvMessage::Abort { transfer, .. } => assert_eq!(transfer, TransferId(3)),
        m => panic!("expected abort, got {m:?}"),
    }

    // Bad magic: the connection is closed; nothing is delivered.
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.write_all(&[0u8; 64]).unwrap();
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
}

#[test]
fn a_stalled_transfer_times_out() {
    let rt = rt();
    let (addr, reg, rx) = receiver(&rt, Duration::from_millis(200));
    reg.expect(TransferId(4), 1000, Duration::from_secs(30));
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.write_all(&wire::encode(&KvMessage::Layer {
        transfer: TransferId(4),
        meta: meta(0),
        bytes: vec![0; 24],
    }))
    .unwrap();
    assert!(matches!(
        rx.recv_timeout(WAIT).unwrap(),
        KvMessage::Layer { .. }
    ));
    match rx.recv_timeout(WAIT).unwrap() {
        KvMessage::Abort { reason, .. } => assert!(reason.contains("stalled"), "{reason}"),
        m => panic!("expected abort, got {m:?}"),
    }
    drop(c);
}

#[test]
fn a_sender_facing_a_stalled_receiver_times_out() {
    // A peer that accepts and never reads: once the socket buffers fill, the writer's
    // timeout fails the transfer; the caller learns it from `complete`, no hang.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let held = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let transport = TcpTransport {
        write_timeout: Duration::from_millis(300),
        ..TcpTransport::default()
    };
    let mut sink = transport.open(&addr, TransferId(8)).unwrap();
    let big = LayerShape {
        kv_heads: 8,
        head_dim: 128,
        token_count: 4096,
        ..meta(0)
    };
    let t0 = std::time::Instant::now();
    let mut failed_early = false;
    for layer in 0..2 {
        let bytes = vec![7u8; big.payload_len().unwrap()];
        if sink.send_layer(LayerShape { layer, ..big }, bytes).is_err() {
            failed_early = true;
            break;
        }
    }
    if !failed_early {
        let err = sink.complete(Vec::new()).unwrap_err();
        assert!(err.to_string().contains(&addr), "{err}");
    }
    assert!(
        t0.elapsed() < WAIT,
        "the stalled send took {:?}",
        t0.elapsed()
    );
    drop(held.join().unwrap());
}

/// A receiver whose registry demands the KV hello made with `secret`.
fn authenticated_receiver(
    rt: &tokio::runtime::Runtime,
    secret: &genie_cluster_auth::ClusterSecret,
) -> (String, TransferRegistry, mpsc::Receiver<KvMessage>) {
    let registry =
        TransferRegistry::with_auth(Arc::new(genie_cluster_auth::Verifier::new(secret.clone())));
    receiver_with(rt, registry, Duration::from_secs(5))
}

/// Writes `hello` (if any) then `frame` on a raw connection; true if the receiver closed
/// it (instead of waiting for more).
fn closed_after(addr: &str, hello: Option<[u8; 72]>, frame: &[u8]) -> bool {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    if let Some(h) = hello {
        s.write_all(&h).unwrap();
    }
    let _ = s.write_all(frame);
    let mut buf = [0u8; 1];
    match std::io::Read::read(&mut s, &mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn with_the_cluster_secret_only_a_peer_with_the_hello_delivers_and_only_once() {
    let rt = rt();
    let secret =
        genie_cluster_auth::ClusterSecret::new(&[b's'; 32], &genie_cluster_auth::SecretSource::Env)
            .unwrap();
    let wrong =
        genie_cluster_auth::ClusterSecret::new(&[b'x'; 32], &genie_cluster_auth::SecretSource::Env)
            .unwrap();
    let (addr, reg, rx) = authenticated_receiver(&rt, &secret);
    reg.expect(TransferId(7), 48, Duration::from_secs(30));
    let layer = wire::encode(&KvMessage::Layer {
        transfer: TransferId(7),
        meta: meta(0),
        bytes: vec![9; 24],
    });
    // No hello, a hello made with another secret, a valid hello for a transfer not
    // expected: each connection is closed, nothing is delivered, and the expected transfer
    // is still there, unclaimed.
    assert!(closed_after(&addr, None, &layer));
    assert!(closed_after(&addr, Some(wrong.kv_hello(7)), &layer));
    assert!(closed_after(&addr, Some(secret.kv_hello(8)), &layer));
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    assert_eq!(
        reg.len(),
        1,
        "refused peers did not consume the expected transfer"
    );

    // The genuine sender delivers.
    let transport = TcpTransport {
        secret: Some(secret.clone()),
        ..TcpTransport::default()
    };
    let mut s = transport.open(&addr, TransferId(7)).unwrap();
    s.send_layer(meta(0), vec![1; 24]).unwrap();
    let got = rx.recv_timeout(WAIT).unwrap();
    assert!(matches!(
        got,
        KvMessage::Layer {
            transfer: TransferId(7),
            ..
        }
    ));
    // While it runs, a second hello for the same transfer (fresh nonce, right secret) is
    // refused: one connection per transfer.
    assert!(closed_after(&addr, Some(secret.kv_hello(7)), &layer));
    // And a transport without the secret is refused outright.
    reg.expect(TransferId(9), 48, Duration::from_secs(30));
    let mut plain = TcpTransport::default().open(&addr, TransferId(9)).unwrap();
    let _ = plain.send_layer(meta(0), vec![0; 24]);
    s.send_layer(meta(1), vec![2; 24]).unwrap();
    s.complete(b"t".to_vec()).unwrap();
    let rest: Vec<KvMessage> = (0..2).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();
    assert!(
        matches!(
            rest[1],
            KvMessage::Complete {
                transfer: TransferId(7),
                ..
            }
        ),
        "{rest:?}"
    );
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "transfer 9 delivered nothing"
    );
    assert_eq!(reg.len(), 1, "transfer 9 is still expected");
}
