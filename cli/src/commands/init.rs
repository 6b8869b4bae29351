//! `pal init --name NAME`: a new network with this device as its first admin.

use node::statedir::StateDir;

pub fn run(state: &StateDir, name: &str) -> anyhow::Result<()> {
    let created = node::init(state, name)?;
    println!("created a new network with {name} as its first admin");
    println!("overlay addresses: {} {}", created["overlay_ipv4"].as_str().unwrap_or("?"), created["overlay_ipv6"].as_str().unwrap_or("?"));
    println!("next: `pal up`, then `pal device invite --name NAME` for each device");
    Ok(())
}
