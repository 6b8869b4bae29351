//! `pal request --name NAME`: request codes for devices that cannot reach members.

pub fn run() -> anyhow::Result<()> {
    anyhow::bail!("`pal request` is not available yet: it arrives with the CloudPal bootstrap (issue #5); use `pal device invite` and `pal join`")
}
