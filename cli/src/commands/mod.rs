//! One file per subcommand arrives with the runtime (issue #4). Until then every subcommand
//! says plainly that it is not available, with a non-zero exit, rather than pretending.

/// Runs the named subcommand.
pub fn run(name: &str) -> Result<(), String> {
    Err(format!("`pal {name}` is not available in this build yet: the node runtime is still being built"))
}
