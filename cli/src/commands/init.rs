//! `pal init --name NAME`: a new network with this device as its first admin.

use node::statedir::StateDir;

pub fn run(state: &StateDir, name: &str) -> anyhow::Result<()> {
    let created = node::enrol::init(state, name, node::clock::unix_secs())?;
    println!("created a new network with {name} as its first admin");
    println!("overlay addresses: {} {}", created.overlay_ipv4, created.overlay_ipv6);
    println!("network fingerprint: {} (a device added by request code is told it: `pal request --network {}`)", created.network, created.network);
    println!("next: `pal up`, then `pal device invite --name NAME` for each device");
    Ok(())
}
