//! `genie bench kv-transfer`: the TCP KV transport over loopback against a raw socket copy
//! of the same bytes. All move a prompt's worth of layers (this model's shape) from one
//! thread to a receiver that sees every byte; the transport also frames, checksums and
//! validates each layer and delivers it as a message, as a decode worker receives it. Two
//! raw baselines, both sending the same layer buffers: the receiver keeps the bytes (reads
//! them into memory holding the whole transfer, reserved and touched beforehand), or
//! discards them (reads into one reused, cache-hot 1 MiB buffer: an upper bound no receiver
//! that keeps the KV can reach).
//!
//! `--auth` compares instead the transport with and without the cluster secret's KV hello
//! (a 72-byte HMAC proof the sender writes first, verified before any frame is read), two
//! receivers side by side, the transfers alternating within each round.

use anyhow::Result;
use clap::Args;
use genie_kv_transfer::{
    tcp, KvMessage, KvTransport, LayerShape, TcpTransport, TransferRegistry, DTYPE_F16,
};
use genie_protocol::TransferId;
use std::io::{Read, Write};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct KvBenchArgs {
    /// Prompt lengths (tokens) whose KV is moved.
    #[arg(long, value_delimiter = ',', default_value = "256,1024,4096")]
    pub tokens: Vec<usize>,
    #[arg(long, default_value_t = 30)]
    pub layers: usize,
    #[arg(long, default_value_t = 3)]
    pub kv_heads: usize,
    #[arg(long, default_value_t = 64)]
    pub head_dim: usize,
    /// Measurements per figure (the median is reported; loopback timings on a 2-core VM
    /// swing by tens of percent run to run, so many).
    #[arg(long, default_value_t = 25)]
    pub repeat: usize,
    /// Compare the transport with the cluster secret's KV hello against it without.
    #[arg(long)]
    pub auth: bool,
}

use crate::stats::median;

/// The receiving side of the benchmark.
struct Receiver<'a> {
    addr: &'a str,
    reg: &'a TransferRegistry,
    rx: &'a mpsc::Receiver<KvMessage>,
}

/// Seconds to move `layers` payloads through the TCP transport `via`.
fn transport_once(
    via: &TcpTransport,
    r: &Receiver,
    id: u64,
    meta: LayerShape,
    layers: usize,
    payload: &[u8],
) -> Result<f64> {
    let (addr, reg, rx) = (r.addr, r.reg, r.rx);
    reg.expect(
        TransferId(id),
        layers * payload.len(),
        Duration::from_secs(60),
    );
    // The layers exist before the clock starts, as a prefill has them when it ships them.
    let owned: Vec<Vec<u8>> = (0..layers).map(|_| payload.to_vec()).collect();
    let t0 = Instant::now();
    let mut sink = via.open(addr, TransferId(id))?;
    for (l, p) in owned.into_iter().enumerate() {
        sink.send_layer(
            LayerShape {
                layer: l as u32,
                ..meta
            },
            p,
        )?;
    }
    sink.complete(Vec::new())?;
    let mut bytes = 0;
    loop {
        match rx.recv_timeout(Duration::from_secs(60))? {
            KvMessage::Layer { bytes: b, .. } | KvMessage::Hidden { bytes: b, .. } => {
                bytes += b.len()
            }
            KvMessage::Complete { .. } => break,
            KvMessage::Abort { reason, .. } => anyhow::bail!("transfer aborted: {reason}"),
        }
    }
    anyhow::ensure!(
        bytes == layers * payload.len(),
        "receiver saw {bytes} bytes"
    );
    Ok(t0.elapsed().as_secs_f64())
}

/// Seconds to write the same layers (one buffer each, as the transport sends them) over a
/// plain loopback socket to a reader that reads them all: into one reused 1 MiB buffer
/// (`keep` false: the bytes are discarded and the buffer stays in cache, an upper bound), or
/// into a destination holding the whole transfer, allocated and touched before the clock
/// starts (`keep` true: a receiver that lands the KV in memory it reserved beforehand).
fn raw_once(layers: &[Vec<u8>], keep: bool) -> Result<f64> {
    let total: usize = layers.iter().map(Vec::len).sum();
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut buf = vec![1u8; if keep { total } else { 1 << 20 }];
    let reader = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut s, _) = listener.accept()?;
        let mut got = 0;
        loop {
            let at = if keep { got } else { 0 };
            let n = s.read(&mut buf[at..])?;
            if n == 0 {
                std::hint::black_box(&buf);
                return Ok(got);
            }
            got += n;
        }
    });
    let t0 = Instant::now();
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    for l in layers {
        s.write_all(l)?;
    }
    drop(s);
    let got = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    anyhow::ensure!(got == total, "raw reader saw {got} of {total} bytes");
    Ok(t0.elapsed().as_secs_f64())
}

/// A KV receiver on loopback serving `registry` (its address and what it delivers).
fn start_receiver(
    rt: &tokio::runtime::Runtime,
    registry: &TransferRegistry,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(String, mpsc::Receiver<KvMessage>)> {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let deliver: genie_kv_transfer::Deliver =
        Arc::new(move |m| tx.lock().map(|t| t.send(m).is_ok()).unwrap_or(false));
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?.to_string();
    rt.spawn(tcp::serve(
        listener,
        registry.clone(),
        deliver,
        Duration::from_secs(30),
        shutdown,
    ));
    Ok((addr, rx))
}

/// Layer 0 of a prompt of `tokens` tokens' KV in `a`'s model shape.
fn layer_meta(a: &KvBenchArgs, tokens: usize) -> LayerShape {
    shape_of(a.layers, a.kv_heads, a.head_dim, tokens)
}

fn shape_of(layers: usize, kv_heads: usize, head_dim: usize, tokens: usize) -> LayerShape {
    LayerShape {
        layer: 0,
        n_layers: layers as u32,
        dtype: DTYPE_F16,
        kv_heads: kv_heads as u32,
        head_dim: head_dim as u32,
        token_start: 0,
        token_count: tokens as u32,
    }
}

/// `--auth`: the transport with the KV hello against it without, alternating.
fn run_auth(a: &KvBenchArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    // A throwaway secret: the cost of the proof does not depend on its bytes.
    let secret = genie_cluster_auth::ClusterSecret::new(
        &[0x5a; genie_cluster_auth::ClusterSecret::MIN_LEN],
        &genie_cluster_auth::SecretSource::Env,
    )?;
    let plain_reg = TransferRegistry::new();
    let auth_reg =
        TransferRegistry::with_auth(Arc::new(genie_cluster_auth::Verifier::new(secret.clone())));
    let (plain_addr, plain_rx) = start_receiver(rt, &plain_reg, shutdown.clone())?;
    let (auth_addr, auth_rx) = start_receiver(rt, &auth_reg, shutdown)?;
    let plain_via = TcpTransport::default();
    let auth_via = TcpTransport {
        secret: Some(secret),
        ..TcpTransport::default()
    };
    println!("{}", crate::host::describe());
    println!("| prompt tokens | KV bytes | no hello GB/s | with KV hello GB/s | ratio (hello / none) | no hello ms | with hello ms |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut id = 1;
    for &n in &a.tokens {
        let meta = layer_meta(a, n);
        let layer_bytes = meta.payload_len().unwrap_or(0);
        let payload: Vec<u8> = (0..layer_bytes).map(|i| (i * 31) as u8).collect();
        let total = layer_bytes * a.layers;
        // times[0]: without the hello, times[1]: with it.
        let mut times: [Vec<f64>; 2] = Default::default();
        for round in 0..a.repeat {
            let sides = [
                (
                    &plain_via,
                    Receiver {
                        addr: &plain_addr,
                        reg: &plain_reg,
                        rx: &plain_rx,
                    },
                ),
                (
                    &auth_via,
                    Receiver {
                        addr: &auth_addr,
                        reg: &auth_reg,
                        rx: &auth_rx,
                    },
                ),
            ];
            // Which goes first alternates, so neither always runs on a warmer cache.
            for k in [round % 2, 1 - round % 2] {
                let (via, r) = &sides[k];
                times[k].push(transport_once(via, r, id, meta, a.layers, &payload)?);
                id += 1;
            }
        }
        let [plain, auth] = times;
        let ratio = crate::stats::median_ratio(&plain, &auth);
        let (mp, ma) = (median(plain), median(auth));
        println!(
            "| {n} | {total} | {:.2} | {:.2} | {:.3} | {:.2} | {:.2} |",
            total as f64 / mp / 1e9,
            total as f64 / ma / 1e9,
            ratio,
            mp * 1e3,
            ma * 1e3
        );
    }
    println!(
        "{} layers x {} KV heads x head dim {} x f16 (K and V), loopback; medians of {} rounds, the two transfers alternating within each round; ratio = median over rounds of (hello GB/s / no-hello GB/s)",
        a.layers, a.kv_heads, a.head_dim, a.repeat
    );
    Ok(())
}

pub fn run(a: KvBenchArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    if a.auth {
        return run_auth(&a, &rt);
    }
    let registry = TransferRegistry::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let (addr, rx) = start_receiver(&rt, &registry, shutdown)?;
    println!("{}", crate::host::describe());
    println!("| prompt tokens | KV bytes | genie TCP transport GB/s | raw copy, bytes kept GB/s | ratio | raw copy, reused 1 MiB buffer GB/s | ratio |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut id = 1;
    for &n in &a.tokens {
        let meta = layer_meta(&a, n);
        let layer_bytes = meta.payload_len().unwrap_or(0);
        let payload: Vec<u8> = (0..layer_bytes).map(|i| (i * 31) as u8).collect();
        let total = layer_bytes * a.layers;
        let mut t = Vec::new();
        let mut r = Vec::new();
        let mut l = Vec::new();
        for _ in 0..a.repeat {
            let recv = Receiver {
                addr: &addr,
                reg: &registry,
                rx: &rx,
            };
            t.push(transport_once(
                &TcpTransport::default(),
                &recv,
                id,
                meta,
                a.layers,
                &payload,
            )?);
            id += 1;
            // The raw copies send the same layers from the same kind of memory: one
            // buffer per layer, filled before the clock starts.
            let layers: Vec<Vec<u8>> = (0..a.layers).map(|_| payload.clone()).collect();
            r.push(raw_once(&layers, false)?);
            l.push(raw_once(&layers, true)?);
        }
        // Ratios are taken within each round (the three runs back to back) and their median
        // reported: the VM's speed drifts between rounds far more than within one.
        let ratio = |base: &[f64]| crate::stats::median_ratio(base, &t);
        let (kept, discarded) = (ratio(&l), ratio(&r));
        let gb = |s: Vec<f64>| total as f64 / median(s) / 1e9;
        println!(
            "| {n} | {total} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            gb(t),
            gb(l),
            kept,
            gb(r),
            discarded
        );
    }
    println!(
        "{} layers x {} KV heads x head dim {} x f16 (K and V), loopback; medians of {} rounds, ratios within each round",
        a.layers, a.kv_heads, a.head_dim, a.repeat
    );
    Ok(())
}

/// `(bytes, seconds)` of TCP loopback transfers through the transport of a prompt's KV for
/// each of `tokens` (a model of `layers` layers, `kv_heads` x `head_dim`, f16 K and V),
/// the median of `repeat` each: the measurements `genie profile` fits a link curve to.
pub fn tcp_link_points(
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    tokens: &[usize],
    repeat: usize,
) -> Result<Vec<(usize, f64)>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let registry = TransferRegistry::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let (addr, rx) = start_receiver(&rt, &registry, shutdown)?;
    let recv = Receiver {
        addr: &addr,
        reg: &registry,
        rx: &rx,
    };
    let via = TcpTransport::default();
    let mut out = Vec::new();
    let mut id = 0;
    for &n in tokens {
        let meta = shape_of(layers, kv_heads, head_dim, n);
        let payload: Vec<u8> = (0..meta.payload_len().unwrap_or(0))
            .map(|i| (i * 31) as u8)
            .collect();
        let t: Vec<f64> = (0..repeat.max(1))
            .map(|_| {
                id += 1;
                transport_once(&via, &recv, id, meta, layers, &payload)
            })
            .collect::<Result<_>>()?;
        out.push((payload.len() * layers, median(t)));
    }
    Ok(out)
}
