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

/// Errors a user sees are one line on stderr and a non-zero exit.
fn assert_one_line_error(args: &[&str], expected: &str) {
    let output = pal(args);
    assert!(!output.status.success(), "{args:?} succeeded");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("pal: ") && stderr.contains(expected), "{stderr}");
}

#[test]
fn commands_without_a_running_node_fail_with_one_clear_line() {
    let state = std::env::temp_dir().join(format!("pal-contract-{}", std::process::id()));
    let state = state.to_str().expect("utf-8 path");
    assert_one_line_error(&["--state", state, "status", "--json"], "not running");
    assert_one_line_error(&["--state", state, "device", "list"], "not running");
    assert_one_line_error(&["--state", state, "netcheck"], "not running");
}

#[test]
fn the_tcp_fallback_flag_is_a_cloudpals_and_takes_an_address_or_off() {
    let state = std::env::temp_dir().join(format!("pal-contract-up-{}", std::process::id()));
    let state = state.to_str().expect("utf-8 path");
    assert_one_line_error(&["--state", state, "up", "--tcp-listen", "0.0.0.0:443"], "--tcp-listen is for a CloudPal: add --cloudpal");
    assert_one_line_error(&["--state", state, "up", "--cloudpal", "--tcp-listen", "everywhere"], "is not ADDR:PORT or off");
    // `off` is understood; what fails then is the missing device, not the flag.
    assert_one_line_error(&["--state", state, "up", "--cloudpal", "--tcp-listen", "off"], "run `pal init` or `pal join` first");
}

#[test]
fn the_userspace_flags_go_together_and_not_with_a_cloudpal() {
    let state = std::env::temp_dir().join(format!("pal-contract-userspace-{}", std::process::id()));
    let state = state.to_str().expect("utf-8 path");
    assert_one_line_error(&["--state", state, "up", "--socks5", "127.0.0.1:1080"], "--socks5 is for the userspace mode: add --userspace");
    assert_one_line_error(&["--state", state, "up", "--expose", "22"], "--expose is for the userspace mode: add --userspace");
    assert_one_line_error(&["--state", state, "up", "--userspace", "--cloudpal"], "a CloudPal needs the kernel");
    assert_one_line_error(&["--state", state, "up", "--userspace", "--http-proxy", "localhost"], "--http-proxy \"localhost\" is not ADDR:PORT");
    assert_one_line_error(&["--state", state, "up", "--userspace", "--socks5", "127.0.0.1:1080"], "run `pal init` or `pal join` first");
}

#[test]
fn sharing_needs_a_guest_and_devices() {
    let state = std::env::temp_dir().join(format!("pal-contract-share-{}", std::process::id()));
    let state = state.to_str().expect("utf-8 path");
    // clap: the devices are required; a node must be running for the rest.
    let output = std::process::Command::new(pal_binary()).args(["--state", state, "device", "share", "friend"]).output().expect("pal");
    assert!(!output.status.success() && String::from_utf8_lossy(&output.stderr).contains("DEVICE[:PORTS]"));
    assert_one_line_error(&["--state", state, "device", "share", "friend", "nas:22"], "pal up");
    assert_one_line_error(&["--state", state, "device", "invite", "--name", "friend", "--role", "visitor"], "unknown role \"visitor\"; use member, admin, cloudpal or guest");
}

#[test]
fn a_bad_options_file_or_environment_fails_with_one_clear_line() {
    let state = std::env::temp_dir().join(format!("pal-contract-config-{}", std::process::id()));
    std::fs::create_dir_all(&state).expect("dir");
    let path = state.to_str().expect("utf-8 path");
    assert_one_line_error(&["--state", path, "up", "--config", "/nonexistent/pal.toml"], "cannot read the config file /nonexistent/pal.toml");
    std::fs::write(state.join("pal.toml"), "listen = \"[::]:41641\"\nport_spray = false\n").expect("file");
    assert_one_line_error(&["--state", path, "up"], "pal.toml: line 2: unknown field `port_spray`");
    std::fs::write(state.join("pal.toml"), "tcp-listen = \"0.0.0.0:443\"\n").expect("file");
    assert_one_line_error(&["--state", path, "up"], "--tcp-listen is for a CloudPal: add --cloudpal");
    std::fs::remove_file(state.join("pal.toml")).expect("rm");
    let output = std::process::Command::new(pal_binary()).args(["--state", path, "up"]).env("PAL_TCP_LISTEN", "0.0.0.0:443").output().expect("pal");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("--tcp-listen is for a CloudPal") && stderr.lines().count() == 1, "{stderr}");
    std::fs::remove_dir_all(&state).ok();
}

#[test]
fn garbled_invite_codes_fail_with_one_clear_line() {
    let state = std::env::temp_dir().join(format!("pal-contract-join-{}", std::process::id()));
    let state = state.to_str().expect("utf-8 path");
    assert_one_line_error(&["--state", state, "join", "pal1notacode", "--name", "phone"], "invite code");
    assert!(!std::path::Path::new(state).join("device.key").exists(), "nothing kept after a failed join");
}

#[test]
fn init_refuses_to_overwrite_a_network() {
    let state = std::env::temp_dir().join(format!("pal-contract-init-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let path = state.to_str().expect("utf-8 path");
    assert!(pal(&["--state", path, "init", "--name", "laptop"]).status.success());
    assert_one_line_error(&["--state", path, "init", "--name", "laptop"], "already holds");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(state.join("device.key")).expect("key").permissions());
    assert_eq!(mode & 0o777, 0o600, "secrets are owner-only");
    std::fs::remove_dir_all(&state).ok();
}

#[test]
fn bad_usage_is_refused() {
    let output = pal(&["device", "invite"]);
    assert!(!output.status.success(), "--name is required");
}

/// `pal --version` names the release and the commit it was built from.
#[test]
fn version_names_the_release_and_the_commit() {
    let output = pal(&["--version"]);
    assert!(output.status.success());
    let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let expected_commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(|| "unknown".to_owned(), |o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    assert_eq!(version, format!("pal {} ({expected_commit})", env!("CARGO_PKG_VERSION")));
}

/// Completion scripts for the three shells, and a manual page, all generated from the one
/// command definition (so they never drift from it).
#[test]
fn completions_and_the_manual_page_come_from_the_command_definition() {
    for (shell, marker) in [("bash", "complete -F _pal"), ("zsh", "#compdef pal"), ("fish", "complete -c pal")] {
        let output = pal(&["completions", shell]);
        assert!(output.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        for command in ["invite", "revoke", "exit", "policy", "no-port-spray"] {
            assert!(script.contains(command), "{shell}: no {command}");
        }
    }
    let output = pal(&["manpage"]);
    assert!(output.status.success());
    let page = String::from_utf8_lossy(&output.stdout);
    assert!(page.starts_with(".ie") || page.contains(".TH pal"), "not roff: {}", &page[..page.len().min(200)]);
    assert!(page.contains("CloudPal") && page.contains("completions"), "the page lacks the commands");
    assert!(!pal(&["completions", "tcsh"]).status.success(), "an unknown shell accepted");
}
