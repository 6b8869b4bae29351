//! `pal join CODE --name NAME`: join the network of an invite code.

use node::statedir::StateDir;

pub fn run(state: &StateDir, code: &str, name: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(node::enrol::join::join(state, code, name))?;
    println!("{name} joined the network; start it with `pal up`");
    Ok(())
}
