//! The cluster secret across real processes: the gateway's control plane on its own
//! listener takes only fresh, signed, unreplayed calls; workers refuse unsigned control
//! calls and KV from peers without the secret; multi-process roles refuse to start
//! without a secret unless `--insecure-cluster` says so (and then warn).

mod support;

use genie_cluster_auth::{ClusterSecret, SecretSource, SIGNATURE_HEADER};
use genie_protocol::worker::{RegisterRequest, WorkerRole, WorkerStatus};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::time::Duration;
use support::{cluster_secret, signed, Server, SECRET_ENV};

fn wrong_secret() -> ClusterSecret {
    ClusterSecret::new(&[b'w'; 40], &SecretSource::Env).unwrap()
}

async fn refusal(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].is_string(), "not an envelope: {v}");
    (
        status,
        v["error"]["code"].as_str().unwrap_or_default().to_string(),
    )
}

async fn registered(gw: &Server) -> usize {
    support::workers(gw).await.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_control_plane_takes_only_fresh_signed_calls_on_its_own_listener() {
    // The secret from a file this time (the env var emptied).
    let dir = std::env::temp_dir().join(format!("genie-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("secret");
    std::fs::write(&file, format!("{}\n", support::CLUSTER_SECRET)).unwrap();
    let gw = Server::gateway(
        &[
            "--internal-port",
            "0",
            "--cluster-secret-file",
            file.to_str().unwrap(),
        ],
        &[(SECRET_ENV, "")],
    );
    let control = gw
        .banner
        .split("workers register at ")
        .nth(1)
        .and_then(|r| r.split("/internal/workers").next())
        .unwrap_or_else(|| panic!("no control address in {:?}", gw.banner))
        .to_string();
    assert_ne!(control, gw.url, "the control plane has its own listener");
    let c = reqwest::Client::new();
    let reg = RegisterRequest {
        role: WorkerRole::Decode,
        address: "http://127.0.0.1:9".into(),
        kv_endpoint: Some("127.0.0.1:9".into()),
        hardware: "cpu".into(),
        status: WorkerStatus::default(),
    };
    let register = format!("{control}/internal/workers");

    // The public listener has no control plane at all, signed or not.
    let r = signed(c.post(gw.url("/internal/workers")).json(&reg)).await;
    assert_eq!(refusal(r).await.0, 404);

    // No proof, a proof made with another secret, a stale proof: refused, nothing registered.
    let r = c.post(&register).json(&reg).send().await.unwrap();
    assert_eq!(refusal(r).await, (401, "cluster_auth_missing".into()));
    let r = c
        .post(&register)
        .header(SIGNATURE_HEADER, "v1,t=1,n=00")
        .json(&reg)
        .send()
        .await
        .unwrap();
    assert_eq!(refusal(r).await, (401, "cluster_auth_malformed".into()));
    let r =
        genie_cluster_auth::http::send_signed(c.post(&register).json(&reg), Some(&wrong_secret()))
            .await
            .unwrap();
    assert_eq!(refusal(r).await, (403, "cluster_auth_invalid".into()));
    let body = serde_json::to_vec(&reg).unwrap();
    let now = genie_cluster_auth::sign::unix_now();
    let stale =
        cluster_secret().sign_http_at(now - 120, [1; 16], "POST", "/internal/workers", &body);
    let r = c
        .post(&register)
        .header(SIGNATURE_HEADER, stale)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(refusal(r).await, (403, "cluster_auth_stale".into()));
    // A genuine proof over another body does not carry over to this one.
    let sig = cluster_secret().sign_http("POST", "/internal/workers", b"{}");
    let r = c
        .post(&register)
        .header(SIGNATURE_HEADER, sig)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(refusal(r).await, (403, "cluster_auth_invalid".into()));
    assert_eq!(registered(&gw).await, 0);

    // Signed: registered. The same signed heartbeat sent twice: the second is a replay.
    let r = signed(c.post(&register).json(&reg)).await;
    assert_eq!(r.status(), 200);
    let id = r.json::<Value>().await.unwrap()["id"].as_u64().unwrap();
    assert_eq!(registered(&gw).await, 1);
    let path = format!("/internal/workers/{id}/heartbeat");
    let hb = serde_json::to_vec(&WorkerStatus::default()).unwrap();
    let sig = cluster_secret().sign_http("POST", &path, &hb);
    let send = || {
        c.post(format!("{control}{path}"))
            .header(SIGNATURE_HEADER, sig.clone())
            .header("content-type", "application/json")
            .body(hb.clone())
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 204);
    assert_eq!(
        refusal(send().await.unwrap()).await,
        (403, "cluster_auth_replayed".into())
    );
    let r = c
        .post(format!("{control}{path}"))
        .json(&WorkerStatus::default())
        .send()
        .await
        .unwrap();
    assert_eq!(refusal(r).await, (401, "cluster_auth_missing".into()));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_refuse_unsigned_control_calls_and_kv_from_peers_without_the_secret() {
    let (p, d) = (
        support::worker_standalone("prefill-worker"),
        support::worker_standalone("decode-worker"),
    );
    let c = reqwest::Client::new();
    let calls = [
        (&d, "POST", "/internal/decode"),
        (&d, "GET", "/internal/status"),
        (&p, "POST", "/internal/prefill"),
        (&p, "GET", "/internal/status"),
    ];
    for (w, method, path) in calls {
        let rb = || match method {
            "POST" => c.post(w.url(path)).json(&serde_json::json!({})),
            _ => c.get(w.url(path)),
        };
        let r = rb().send().await.unwrap();
        assert_eq!(
            refusal(r).await,
            (401, "cluster_auth_missing".into()),
            "{path}"
        );
        let r = genie_cluster_auth::http::send_signed(rb(), Some(&wrong_secret()))
            .await
            .unwrap();
        assert_eq!(
            refusal(r).await,
            (403, "cluster_auth_invalid".into()),
            "{path}"
        );
        // Health and metrics stay open; a signed call gets through to the handler.
        assert_eq!(reqwest::get(w.url("/health")).await.unwrap().status(), 200);
        assert_eq!(reqwest::get(w.url("/metrics")).await.unwrap().status(), 200);
        let r = signed(rb()).await;
        assert!(
            r.status() == 200 || r.status() == 400 || r.status() == 422,
            "{path}: {}",
            r.status()
        );
    }

    // A peer that opens the KV port and sends a well-formed frame without the hello (or
    // with a hello made with another secret) is cut off before its frame is read.
    let kv = d.kv_endpoint.clone().unwrap();
    let frame = genie_kv_transfer::wire::encode(&genie_kv_transfer::KvMessage::Abort {
        transfer: genie_protocol::TransferId(1),
        reason: "forged".into(),
    });
    for hello in [None, Some(wrong_secret().kv_hello(1))] {
        let kv = kv.clone();
        let frame = frame.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(&kv).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            if let Some(h) = hello {
                s.write_all(&h).unwrap();
            }
            let _ = s.write_all(&frame);
            let mut buf = [0u8; 1];
            match s.read(&mut buf) {
                Ok(0) => {}
                Err(e)
                    if e.kind() != std::io::ErrorKind::WouldBlock
                        && e.kind() != std::io::ErrorKind::TimedOut => {}
                other => panic!("the KV port kept an unauthenticated connection open: {other:?}"),
            }
        })
        .await
        .unwrap();
    }
}

/// Runs `genie ARGS` without any secret; its exit code and stderr.
fn without_secret(args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_genie"))
        .args(args)
        .env(SECRET_ENV, "")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn multi_process_roles_refuse_to_start_without_a_secret_unless_insecure() {
    for role in [
        &["gateway", "--port", "0"][..],
        &["prefill-worker", "--port", "0"],
        &["decode-worker", "--port", "0"],
        &["stage-worker", "--layers", "0..15", "--port", "0"],
    ] {
        let (code, err) = without_secret(role);
        assert_eq!(code, Some(1), "{role:?}: {err}");
        for way in [
            "--cluster-secret-file",
            "GENIE_CLUSTER_SECRET",
            "cluster.secret_file",
            "--insecure-cluster",
        ] {
            assert!(err.contains(way), "{role:?} does not name {way}: {err}");
        }
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_genie"))
        .args(["decode-worker", "--port", "0"])
        .env(SECRET_ENV, "too short")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("at least 32") && !err.contains("too short"),
        "{err}"
    );

    // --insecure-cluster starts, with a loud warning.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_genie"))
        .args([
            "gateway",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--insecure-cluster",
        ])
        .env(SECRET_ENV, "")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if l.contains("INSECURE CLUSTER") {
                let _ = tx.send(());
            }
        }
    });
    let warned = rx.recv_timeout(Duration::from_secs(120)).is_ok();
    let _ = child.kill();
    let _ = child.wait();
    assert!(warned, "no warning from an insecure gateway");
}
