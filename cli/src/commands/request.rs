//! `pal request --name NAME`: a device that members can reach but that cannot reach them (a
//! fresh CloudPal) prints a request code and waits until an admin adds it with `pal device add`.

use anyhow::Context;
use node::app::DEFAULT_PORT;
use node::statedir::StateDir;
use std::io::Write;
use std::net::SocketAddr;

pub fn run(state: &StateDir, name: &str, network: &str, listen: Option<String>) -> anyhow::Result<()> {
    let listen: SocketAddr = match listen {
        Some(text) => text.parse().with_context(|| format!("--listen {text:?} is not ADDR:PORT"))?,
        None => SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let role = runtime.block_on(node::enrol::request::request(state, name, listen, network, |code| {
        println!("on an admin device run: pal device add CODE --role cloudpal (or member, admin); waiting for it…");
        println!("{code}");
        let _ = std::io::stdout().flush();
    }))?;
    let hint = if role == membership::Role::CloudPal { "pal up --cloudpal" } else { "pal up" };
    println!("{name} was added to the network as {}; start it with `{hint}`", role.as_str());
    Ok(())
}
