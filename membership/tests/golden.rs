//! ML-11: golden vectors. Entries built from fixed seeds must keep encoding to exactly these
//! bytes and hashes; a format change has to bump FORMAT_VERSION and add new vectors.

use membership::testkit::Network;
use membership::{Entry, Operation, Policy, Role};

fn vectors() -> Vec<(&'static str, Entry)> {
    let mut net = Network::new(2026);
    let founder = net.founder.key.clone();
    let genesis = net.log.entries().next().expect("genesis").clone();
    let laptop = net.member("laptop", Role::Member);
    let add = net.append(&founder, Operation::AddDevice { device: laptop.record.clone() });
    let (invite_hash, secret) = net.invite(&founder, Role::CloudPal, 3600);
    let invite = net.log.get(&invite_hash).expect("invite").clone();
    let cloudpal = net.member("cloudpal", Role::CloudPal);
    let join = Network::join_entry(&net.log, (invite_hash, &secret), &cloudpal, net.now);
    net.log.ingest(vec![join.clone()]).expect("join");
    let mut policy = Policy::default();
    policy.exit.enabled = true;
    policy.dns.blocklists.push("ads.example".into());
    let set_policy = net.append(&founder, Operation::SetPolicy { policy });
    let revoke = net.append(&founder, Operation::RevokeDevice { device: laptop.key.public_key().device_id() });
    let rotate = net.append(&founder, Operation::RotateSecret { secret: membership::entry::RotationSecret([0x2a; 32]) });
    vec![
        ("genesis", genesis),
        ("add_device", add),
        ("invite", invite),
        ("join", join),
        ("set_policy", set_policy),
        ("revoke_device", revoke),
        ("rotate_secret", rotate),
    ]
}

/// (name, entry hash, BLAKE2s of the encoded bytes as a compact fingerprint of the encoding)
const GOLDEN: &[(&str, &str, &str)] = &[
    ("genesis", "6e0fd8eb5bc32c535b3aa18d33919dad2bd578f71aef2c8123e298bb8128ed14", "173f97c689670b146e440848c7cebdcfac746bda5c9daabe6799f64381f10ac1"),
    ("add_device", "7cd1a8421ee7ad49950534c4c744ba2dacb8e09e24edfb2cc54328bef1372cc4", "851a305e6e76dbf5a2f0c851eb24731e4133b83a4fa760cb1aab73e45b38f75d"),
    ("invite", "b10c98de46d81f2f5ef1a60b828115432f36b12d0763d37fd85bb06ea5e4b045", "5829b43949b145f4df9e829a993b08cbcd6535df42b371b5a43049495547dd5f"),
    ("join", "43bf8520c7c4328eb13383908bf1fea2900262e71a2cbc5c00025f6fc3c285b1", "bfa5444a8b36be300d176dca6d20b943af3e125b1bdd1b29166832ba374dc250"),
    ("set_policy", "2d617e5df68fe1f6fe20765268ffbde73d0b36cd698206df46c56c832cef9a16", "a88798df8a752f6f2827dc900c987577ae42ce5a1740c40a92e6040d7c5b6844"),
    ("revoke_device", "0e0b68a632456266e5eafd5bf808b260daa774b9dd9ebcea215ab6bae05967d0", "6cd33a9eecb35759bc3e390ab68e20162c6253a2e933143cc51f8885b1b03560"),
    ("rotate_secret", "3dd7af7ddbded4a942926d5d4e819e00e05310cc8f929cb9e424331b163b65cc", "3d9cca0c0f83f9a27f0e3e7a6588c3de639b53aae0e33e46585442add4616d8b"),
];

#[test]
fn ml11_golden_vectors_still_encode_and_hash_the_same() {
    let vectors = vectors();
    if std::env::var_os("PRINT_GOLDEN").is_some() {
        for (name, entry) in &vectors {
            println!("    (\"{name}\", \"{}\", \"{}\"),", entry.hash().to_hex(), fingerprint(entry.encoded()));
        }
    }
    assert_eq!(vectors.len(), GOLDEN.len(), "one golden vector per operation");
    for ((name, entry), (golden_name, hash, encoding)) in vectors.iter().zip(GOLDEN) {
        assert_eq!(name, golden_name);
        assert_eq!(entry.hash().to_hex(), *hash, "{name}: hash drifted");
        assert_eq!(fingerprint(entry.encoded()), *encoding, "{name}: encoding drifted");
        assert_eq!(Entry::decode(entry.encoded()).as_ref(), Ok(entry), "{name}: round trip");
    }
}

fn fingerprint(bytes: &[u8]) -> String {
    use blake2::{Blake2s256, Digest};
    protocol::keys::hex(&Blake2s256::digest(bytes))
}
