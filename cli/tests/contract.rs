//! The `pal` binary exposes DESIGN.md's CLI contract and fails honestly where the runtime is
//! not built yet.

use std::process::Command;
fn pal_binary() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_pal"))
}

fn pal(args: &[&str]) -> std::process::Output {
    let binary = pal_binary();
    Command::new(&binary)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e} (build it with cargo build -p cli)", binary.display()))
}

#[test]
fn help_lists_every_subcommand_of_the_contract() {
    let output = pal(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for command in ["init", "up", "device", "join", "request", "status", "ping", "log"] {
        assert!(help.contains(command), "missing {command} in:\n{help}");
    }
    let output = pal(&["device", "--help"]);
    let help = String::from_utf8_lossy(&output.stdout);
    for command in ["invite", "add", "list", "revoke"] {
        assert!(help.contains(command), "missing device {command} in:\n{help}");
    }
}

#[test]
fn unbuilt_commands_fail_with_one_clear_line() {
    let output = pal(&["status", "--json"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("pal: "), "{stderr}");
}

#[test]
fn bad_usage_is_refused() {
    let output = pal(&["device", "invite"]);
    assert!(!output.status.success(), "--name is required");
}
