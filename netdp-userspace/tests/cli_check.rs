//! `netdp check` loads the embedded programs for every backend with the real verifier and
//! says so per backend; the image's smoke test in CI runs the same command.
use std::process::Command;

#[test]
fn check_verifies_the_programs_for_every_backend() {
    let out = Command::new(env!("CARGO_BIN_EXE_netdp"))
        .arg("check")
        .output()
        .expect("netdp runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for backend in ["host-gw", "vxlan", "ipip", "udp"] {
        for masq in ["", " + ip-masq"] {
            let label = format!("{backend}{masq}");
            assert!(
                text.lines()
                    .any(|l| l.starts_with("ok") && l.split("  ").any(|f| f.trim() == label)),
                "no ok line for {label}: {text}"
            );
        }
    }
}
