//! Regenerates the fuzz seed corpora from a small live network:
//! `cargo run -p membership --features testing --example write_fuzz_seeds`.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (target, name, bytes) in membership::fuzzing::seeds() {
        std::fs::create_dir_all(root.join(target))?;
        std::fs::write(root.join(target).join(name), bytes)?;
    }
    Ok(())
}
