//! The kubectl plugin: the binary called through a link named `kubectl-kproxy` behaves as
//! `kproxy`, with `kubectl kproxy` as its program name in help and usage.

use std::path::PathBuf;
use std::process::Command;

fn plugin_link() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("kubectl-kproxy");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kproxy"), &link).expect("symlink");
    (dir, link)
}

#[test]
fn kubectl_kproxy_is_kproxy_named_as_a_kubectl_plugin() {
    let (_dir, link) = plugin_link();
    let help = Command::new(&link).arg("--help").output().expect("run");
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("Usage: kubectl kproxy <COMMAND>"), "{help}");
    let sub = Command::new(&link)
        .args(["trace", "--help"])
        .output()
        .expect("run");
    let sub = String::from_utf8_lossy(&sub.stdout);
    assert!(sub.contains("Usage: kubectl kproxy trace"), "{sub}");

    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/rules/scenarios/clusterip");
    let args = std::fs::read_to_string(format!("{scenario}/args")).expect("args");
    let render = |program: &std::path::Path| {
        let o = Command::new(program)
            .args(["render", "-f", &format!("{scenario}/manifests.yaml")])
            .args(args.split_whitespace())
            .output()
            .expect("run");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    };
    let expected = std::fs::read(format!("{scenario}/expected.nft")).expect("expected");
    assert_eq!(render(&link), expected);
    assert_eq!(render(env!("CARGO_BIN_EXE_kproxy").as_ref()), expected);

    // A usage error names the plugin too, with kproxy's exit code.
    let bad = Command::new(&link)
        .args(["render", "--no-such-flag"])
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("Usage: kubectl kproxy render"));
}
