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
    policy.exit.rotate_egress = true;
    policy.firewall.deny.push("ads.example.com".parse().expect("a rule"));
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
    ("genesis", "4f1b6a20916ed603dc55e1038ee1e25d1baf5fcdcbbaad4e479a086a9d81551c", "4816f55c0a96bc3c29fd9e811059567ffbae754dee7f8fa576822df60f8f89ea"),
    ("add_device", "d27d8e01502af211828acb536117ed5a405fb1db3cc476e1f65982e1b13afddf", "aa1e99628fc6a7424ffe75d681afb5b4720f1a7773b3362ad509c22121573d3b"),
    ("invite", "1cf8ce4dd30527a137ad81798959a1f1a4ff812d960451350b2ee3dd04f9c7de", "1d4c32b1f844eccdad21f1b9fcb6f8eaa059ec9cc2c22f9e498c69beb57f8a10"),
    ("join", "90bfc527204716644fb4cc2cd80c748e8af0eb3d7355b24d2797739cf0999e22", "941adb0c78cf2b9c39fc318fa406c241d5498b7ddad1bbedb05743c37a0dfa91"),
    ("set_policy", "1f7658ad5f9591ea98d4f66a6468a8ba7a68ba50325b2c02a1204bf765b9843c", "6431b89b8acc13953fbbcaf2b6e7c6028fb9f5a3af9c9e0453e49d4bb6b99331"),
    ("revoke_device", "da35ab241540b657a8ad1d39bd10761d1e4d24ff2fc31c42d715a2f337c45f09", "cdd9a30e36aeb78901472565968fef27f46f0279cc43c761ea1b1625737202ff"),
    ("rotate_secret", "4f82d9a3110f933f074107114e629e00367233d4d3b36ad68602c031d60220e3", "3ec00778d9b5db8eb9a484e878778f35e44233ffa2263c159ac6c9b33bf6f0a8"),
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
