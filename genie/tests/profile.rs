//! `genie profile` end to end: the real engine on this host, a small set of shapes, the
//! profile file read back through the scheduler's reader.

use genie_scheduler::cost_profile::CostProfile;

#[test]
fn genie_profile_measures_fits_and_writes_a_versioned_profile() {
    let dir = std::env::temp_dir().join(format!("genie-profile-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out_path = dir.join("p.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_genie"))
        .args([
            "profile",
            "--threads",
            "1",
            "--prefill",
            "8,32,96,2x32",
            "--batch",
            "1,3",
            "--context",
            "8,48",
            "--steps",
            "2",
            "--link-tokens",
            "4,512",
            "--repeat",
            "1",
            "--out",
        ])
        .arg(&out_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every measurement is printed beside its fitted value.
    for row in [
        "| prefill 96 tokens |",
        "| prefill 2 x 32 tokens |",
        "| decode step, batch 3 at context 48 |",
        "| KV over TCP loopback,",
    ] {
        assert!(stdout.contains(row), "{row} missing:\n{stdout}");
    }
    let p = CostProfile::from_json(&std::fs::read_to_string(&out_path).unwrap()).unwrap();
    assert_eq!(p.version, CostProfile::VERSION);
    assert_eq!(p.threads, 1);
    assert!(p.model.ends_with(".gguf"), "{}", p.model);
    assert_eq!((p.prefill.fit.points, p.decode.fit.points), (4, 4));
    // Work costs time: more tokens, a bigger batch and a longer transfer all predict more.
    assert!(p.prefill.ms(&[96]) > p.prefill.ms(&[8]));
    assert!(p.decode.ms(&[48; 3]) > p.decode.ms(&[8]));
    let tcp = p.link("tcp").expect("a tcp link");
    assert!(tcp.gbytes_per_s > 0.0 && tcp.ms(1 << 26) > tcp.ms(1 << 10));

    // A shape that is not one is refused before anything runs, naming it.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_genie"))
        .args(["profile", "--prefill", "4x0", "--out"])
        .arg(dir.join("never.json"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("`4x0`"));
    assert!(!dir.join("never.json").exists());
    std::fs::remove_dir_all(&dir).ok();
}
