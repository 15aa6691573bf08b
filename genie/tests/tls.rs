//! HTTPS on every listener of a cluster of real processes: a gateway and its workers with
//! certificates from a private CA (made here with rcgen), the workers registering with the
//! gateway over HTTPS and the gateway calling them over HTTPS. A client that trusts the CA
//! gets the same tokens as `genie generate`; a client that does not, or one speaking plain
//! HTTP, gets nothing.

mod support;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use support::{genie_generate, Server, MODEL};

struct Pki {
    dir: PathBuf,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA and a certificate it signed for `localhost` and 127.0.0.1, as PEM files.
fn pki(tag: &str) -> Pki {
    let dir = std::env::temp_dir().join(format!("genie-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "genie test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    Pki {
        ca: write("ca.pem", ca.pem()),
        cert: write("cert.pem", leaf.pem()),
        key: write("key.pem", leaf_key.serialize_pem()),
        dir,
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn trusting(ca: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca).unwrap();
    reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_serves_and_talks_https_end_to_end() {
    let pki = pki("cluster");
    let tls = [
        "--tls-cert-file",
        s(&pki.cert),
        "--tls-key-file",
        s(&pki.key),
        "--tls-ca-file",
        s(&pki.ca),
    ];
    let mut args = vec!["gateway", "--host", "127.0.0.1", "--port", "0"];
    args.extend_from_slice(&tls);
    let gw = Server::spawn(&args, &[]);
    assert!(gw.url.starts_with("https://127.0.0.1:"), "{}", gw.banner);
    assert!(
        gw.banner.contains("workers register at https://"),
        "{}",
        gw.banner
    );
    let mut workers = Vec::new();
    for role in ["prefill-worker", "decode-worker"] {
        let mut a = vec![
            role,
            "--gateway",
            gw.url.as_str(),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--threads",
            "1",
        ];
        a.extend_from_slice(&tls);
        let w = Server::spawn(&a, &[]);
        assert!(w.url.starts_with("https://"), "{}", w.banner);
        workers.push(w);
    }
    let c = trusting(&pki.ca);
    // The workers registered over HTTPS and answer the gateway's HTTPS health polls.
    support::wait_for("2 healthy workers registered over HTTPS", async || {
        let data = support::workers_via(&c, &gw).await;
        data.iter().filter(|w| w["healthy"] == true).count() == 2
    })
    .await;
    let data = support::workers_via(&c, &gw).await;
    assert!(
        data.iter()
            .all(|w| w["address"].as_str().unwrap().starts_with("https://")),
        "{data:?}"
    );
    let p = "Name a planet of the solar system.";
    let want = genie_generate(&["--chat", "--prompt", p, "--max-tokens", "16"]);
    let r = c
        .post(gw.url("/v1/chat/completions"))
        .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": p}], "max_tokens": 16, "temperature": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], want["text"], "{v}");

    // Without the CA the certificate is not trusted; plain HTTP gets no answer.
    let untrusting = reqwest::Client::builder().use_rustls_tls().build().unwrap();
    let e = untrusting.get(gw.url("/health")).send().await.unwrap_err();
    assert!(e.is_connect(), "{e:?}");
    let plain = gw.url("/health").replacen("https://", "http://", 1);
    assert!(reqwest::get(&plain).await.is_err(), "plain HTTP answered");
    for w in &workers {
        let plain = w.url("/health").replacen("https://", "http://", 1);
        assert!(
            reqwest::get(&plain).await.is_err(),
            "a worker answered plain HTTP"
        );
        assert_eq!(c.get(w.url("/health")).send().await.unwrap().status(), 200);
    }
}

#[test]
fn a_missing_key_or_a_key_that_does_not_fit_stops_the_process_with_the_file_named() {
    let pki = pki("bad");
    let other = pki_key_only(&pki.dir);
    for (key, want) in [
        (pki.dir.join("absent.pem"), "absent.pem"),
        (other, "does not fit"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_genie"))
            .args([
                "serve",
                "--port",
                "0",
                "--tls-cert-file",
                s(&pki.cert),
                "--tls-key-file",
                s(&key),
            ])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{err}");
        assert!(
            !err.contains("PRIVATE KEY"),
            "key material in the error: {err}"
        );
    }
    // A certificate without its key is refused before anything starts.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_genie"))
        .args(["serve", "--port", "0", "--tls-cert-file", s(&pki.cert)])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--tls-key-file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private key that belongs to no certificate here.
fn pki_key_only(dir: &Path) -> PathBuf {
    let p = dir.join("other-key.pem");
    std::fs::write(&p, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    p
}
