//! The README's demo: a whole CloudPal network on this machine, in network namespaces.
//! Three devices on one LAN go through init → invite → join → up, then show `status`, a
//! `pal ping` and a kernel ping over the overlay, and everything is cleaned up on exit.
//! Run it with `bash tests/demo.sh` (as root).

use std::time::Duration;
use tests::LanNetwork;

fn main() {
    println!("CloudPal demo: three devices on one LAN (network namespaces on a bridge, 198.51.100.0/24)\n");
    let net = LanNetwork::form_narrated(&["laptop", "phone", "desktop"], |step| println!("  {step}"));
    if !net.wait_for_membership(Duration::from_secs(20)) {
        eprintln!("demo: the devices did not agree on the membership in time");
        std::process::exit(1);
    }
    println!("\nlaptop$ pal device list");
    print!("{}", indent(&net.node("laptop").pal_ok(&["device", "list"])));
    tests::wait_until(Duration::from_secs(15), || net.node("phone").pal(&["ping", "desktop", "-c", "1"]).status.success());
    println!("\nphone$ pal ping desktop");
    print!("{}", indent(&net.node("phone").pal_ok(&["ping", "desktop", "-c", "3"])));
    let (desktop_v4, _) = net.node("desktop").overlay();
    println!("\nphone$ ping -c 3 {desktop_v4}    (the kernel's own ping, through the overlay)");
    let ping = net.node("phone").netns.exec("ping", &["-c", "3", "-W", "2", &desktop_v4]);
    print!("{}", indent(&String::from_utf8_lossy(&ping.stdout)));
    println!("\nphone$ pal status");
    print!("{}", indent(&net.node("phone").pal_ok(&["status"])));
    println!("\nAll paths are direct: the devices share a LAN. NAT traversal and the CloudPal relay come next.");
    println!("Cleaning up namespaces and state.");
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("    {line}\n")).collect()
}
