//! Block lists (Pi-hole's and AdGuard's inputs): hosts files (`0.0.0.0 ads.example.com`) and
//! plain domain lists, with `#` and `!` comment lines. A name is blocked when it or any of its
//! parents is listed. The names live in one string arena with a hash set of their spans, so a
//! million-entry list costs a few tens of megabytes, and a lookup hashes each suffix once.

use hashbrown::HashTable;

/// The listed names, lower case, without a trailing dot.
#[derive(Debug, Default, Clone)]
pub struct BlockList {
    arena: String,
    /// (start, len) of each name in `arena`, found by the name's hash.
    names: HashTable<(u32, u32)>,
}

/// FNV-1a of the lower-cased name: fast for short keys, and lookups need no allocation.
fn name_hash(name: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name {
        hash = (hash ^ u64::from(byte.to_ascii_lowercase())).wrapping_mul(0x100_0000_01b3);
    }
    hash
}

impl BlockList {
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Bytes held on the heap: the arena and the table (an entry and a control byte per slot).
    pub fn heap_bytes(&self) -> usize {
        self.arena.capacity() + self.names.capacity() * (std::mem::size_of::<(u32, u32)>() + 1)
    }

    /// Adds every name of a hosts file or domain list; returns how many names it held.
    /// Lines that are neither (address-only lines, single labels like `localhost`, garbage)
    /// are skipped.
    pub fn add_text(&mut self, text: &str) -> usize {
        let mut added = 0;
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() || line.starts_with('!') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let first = fields.next().unwrap_or("");
            // Hosts format: an address, then one or more names.
            let hosts = first.parse::<std::net::IpAddr>().is_ok();
            for name in std::iter::once(first).filter(|_| !hosts).chain(fields.filter(|_| hosts)) {
                // AdGuard's `||ads.example.com^` is the same rule as a plain name.
                if self.insert(name.trim_start_matches("||").trim_end_matches('^')) {
                    added += 1;
                }
            }
        }
        added
    }

    /// Adds one name; false if it is not a usable domain name (a single label, too long,
    /// characters no name has).
    pub fn insert(&mut self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() || name.len() > 253 || !name.contains('.') || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') {
            return false;
        }
        let hash = name_hash(name.as_bytes());
        if self.contains_hashed(name.as_bytes(), hash) {
            return true;
        }
        let start = self.arena.len() as u32;
        self.arena.extend(name.chars().map(|c| c.to_ascii_lowercase()));
        let arena = &self.arena;
        self.names.insert_unique(hash, (start, name.len() as u32), |(s, l)| name_hash(&arena.as_bytes()[*s as usize..(*s + *l) as usize]));
        true
    }

    /// Whether `name` (any case, trailing dot or not) or one of its parents is listed.
    pub fn blocks(&self, name: &str) -> bool {
        let mut name = name.strip_suffix('.').unwrap_or(name).as_bytes();
        loop {
            if self.contains_hashed(name, name_hash(name)) {
                return true;
            }
            match name.iter().position(|b| *b == b'.') {
                Some(dot) => name = &name[dot + 1..],
                None => return false,
            }
        }
    }

    fn contains_hashed(&self, name: &[u8], hash: u64) -> bool {
        let arena = self.arena.as_bytes();
        self.names.find(hash, |(s, l)| arena[*s as usize..(*s + *l) as usize].eq_ignore_ascii_case(name)).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_03_a_name_its_subdomains_any_case_and_a_trailing_dot_are_blocked() {
        let mut list = BlockList::default();
        let text = "# a hosts file\n0.0.0.0 ads.example.com tracker.example.net\n127.0.0.1 localhost\n! adblock comment\n||metrics.example.org^\nplain.example\n::1 ip6-localhost\n";
        assert_eq!(list.add_text(text), 4);
        for blocked in ["ads.example.com", "ADS.Example.COM.", "x.y.ads.example.com", "tracker.example.net", "metrics.example.org", "plain.example"] {
            assert!(list.blocks(blocked), "{blocked} got through");
        }
        for allowed in ["example.com", "badads.example.com", "localhost", "com", "example.net", "ads.example.co"] {
            assert!(!list.blocks(allowed), "{allowed} was blocked");
        }
        assert!(!list.insert("localhost") && !list.insert("bad name.example"));
        assert_eq!(list.len(), 4);
        list.add_text("ads.example.com\n");
        assert_eq!(list.len(), 4, "a name twice is one entry");
    }
}
