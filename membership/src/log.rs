//! The log: a DAG of entries, ingested atomically in batches, folded deterministically into
//! [`State`].
//!
//! **Ingestion** (every node decides the same, because it looks only at an entry and its
//! ancestors, which its hashes fix): an entry is refused unless it decodes canonically, its
//! signatures verify, its parents are known, it belongs to this network, and its operation is
//! allowed in the state of its own causal past — so an unauthorised signer (ML-04), a revoked
//! device appending after its revocation (ML-05 at head), a reused or expired invite on one
//! branch (INV-01, INV-02) never enter the log.
//!
//! **The fold** (the one rule for concurrent entries): first *revocation dominance* — each
//! revocation that takes effect voids every entry of its target that is not an ancestor of
//! the revocation, however deep the fork it sits on (ML-05); conflicting revocations are
//! decided most senior author first, so a stolen admin (or an accomplice it admitted) cannot
//! out-revoke the owner. Then the remaining entries are applied in a topological order whose
//! ties break by entry hash; an entry not allowed at its turn is void. So an invite redeemed
//! on two partitions keeps exactly the join that sorts first (INV-05), and any two nodes with
//! the same entries compute byte-identical state, whatever order they received them in (ML-06).

use crate::entry::{Entry, EntryError, EntryHash, MAX_PARENTS, NetworkId, Operation};
use crate::state::{RuleError, State};
use protocol::{DeviceId, DeviceSigningKey};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// Entries per ingested batch (sync sends at most this many at once).
pub const MAX_BATCH_ENTRIES: usize = 256;
/// Rounds of revocation decisions before the result is taken as final. A round repeats only
/// when a revocation accepted early is voided by a later one; chains of that longer than this
/// need more mutually revoking admins than any personal network has.
const MAX_FOLD_PASSES: usize = 16;
/// How far a joining device's clock may differ from the member admitting it. The join's time
/// is signed by the joiner, so without this bound it could backdate a join past its expiry.
pub const MAX_JOIN_CLOCK_SKEW: u64 = 300;

/// Largest log a node holds (ML-13: iteration limits): beyond this, ingestion refuses.
pub const MAX_LOG_ENTRIES: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct Log {
    network: NetworkId,
    entries: BTreeMap<EntryHash, Entry>,
    /// The fold order (topological, ties by hash).
    order: Vec<EntryHash>,
    heads: BTreeSet<EntryHash>,
    state: State,
}

/// Why an entry or a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("entry {index} of the batch: {error}")]
    InBatch { index: usize, error: Box<LogError> },
    #[error(transparent)]
    Entry(#[from] EntryError),
    #[error("entry belongs to another network")]
    WrongNetwork,
    #[error("parent mismatch: a parent entry is unknown")]
    UnknownParent,
    #[error("multiple distinct chains: a second genesis")]
    SecondGenesis,
    #[error("not allowed: {0}")]
    Rule(#[from] RuleError),
    #[error("batch larger than {MAX_BATCH_ENTRIES} entries")]
    BatchTooLarge,
    #[error("log is full")]
    LogFull,
    #[error("the joining device's clock is too far from ours")]
    ClockSkew,
}

impl Log {
    /// A log holding only `genesis`.
    pub fn from_genesis(genesis: Entry) -> Result<Self, LogError> {
        if !matches!(genesis.operation(), Operation::Genesis { .. }) {
            return Err(RuleError::NotGenesis.into());
        }
        let mut state = State::default();
        state.apply(&genesis)?;
        let hash = genesis.hash();
        Ok(Self {
            network: NetworkId::from(hash),
            entries: BTreeMap::from([(hash, genesis)]),
            order: vec![hash],
            heads: BTreeSet::from([hash]),
            state,
        })
    }

    pub fn network(&self) -> NetworkId {
        self.network
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn heads(&self) -> &BTreeSet<EntryHash> {
        &self.heads
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, hash: &EntryHash) -> Option<&Entry> {
        self.entries.get(hash)
    }

    pub fn contains(&self, hash: &EntryHash) -> bool {
        self.entries.contains_key(hash)
    }

    /// Entries in fold order (parents before children).
    /// The device that signed the genesis: its id seeds the network's overlay prefix.
    pub fn founder(&self) -> Option<protocol::DeviceId> {
        self.entries().next().map(|genesis| genesis.author())
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.order.iter().filter_map(|hash| self.entries.get(hash))
    }

    /// The entries' hashes in fold order (what [`Log::entries`] would hash, without looking
    /// each entry up).
    pub(crate) fn order(&self) -> &[EntryHash] {
        &self.order
    }

    /// Signs and appends a new entry on top of every head; refused if not allowed now.
    pub fn append(
        &mut self,
        operation: Operation,
        author: &DeviceSigningKey,
        invite: Option<&DeviceSigningKey>,
        now: u64,
    ) -> Result<Entry, LogError> {
        let parents = self.parents_for(&author.public_key().device_id(), &operation);
        let contents = crate::entry::EntryContents {
            network: Some(self.network),
            parents,
            author: author.public_key(),
            time: now,
            operation,
        };
        let entry = Entry::sign(contents, author, invite)?;
        self.ingest(vec![entry.clone()])?;
        Ok(entry)
    }

    /// The parents of a new entry: every head while there are at most [`MAX_PARENTS`]; beyond
    /// that (forks, say a stolen admin's siblings), the heads the operation needs in its causal
    /// past first — the author's admission, a revocation's target's, a join's invite — then
    /// the newest in fold order. Each append so merges up to `MAX_PARENTS` heads into one, and
    /// the entry always decodes everywhere.
    pub fn parents_for(&self, author: &DeviceId, operation: &Operation) -> Vec<EntryHash> {
        if self.heads.len() <= MAX_PARENTS {
            return self.heads.iter().copied().collect();
        }
        let position: BTreeMap<EntryHash, usize> = self.order.iter().enumerate().map(|(i, h)| (*h, i)).collect();
        let mut heads: Vec<EntryHash> = self.heads.iter().copied().collect();
        heads.sort_by_key(|h| std::cmp::Reverse(position.get(h).copied().unwrap_or(0)));
        let admission = |device: &DeviceId| self.state.devices.get(device).map(|d| d.admitted_by);
        let mut needed: Vec<EntryHash> = admission(author).into_iter().collect();
        match operation {
            Operation::RevokeDevice { device } => needed.extend(admission(device)),
            Operation::Join { invite, .. } => needed.push(*invite),
            _ => {}
        }
        let mut chosen: Vec<EntryHash> = Vec::new();
        for need in needed {
            if chosen.iter().any(|head| self.is_ancestor(&need, head)) {
                continue;
            }
            if let Some(head) = heads.iter().find(|head| !chosen.contains(head) && self.is_ancestor(&need, head)) {
                chosen.push(*head);
            }
        }
        for head in heads {
            if chosen.len() == MAX_PARENTS {
                break;
            }
            if !chosen.contains(&head) {
                chosen.push(head);
            }
        }
        chosen.truncate(MAX_PARENTS);
        chosen.sort();
        chosen
    }

    /// Ingests a batch atomically: either every new entry is accepted, or none is and the log
    /// is unchanged (ML-09). Entries already held are skipped. Returns how many were new.
    pub fn ingest(&mut self, batch: Vec<Entry>) -> Result<usize, LogError> {
        if batch.len() > MAX_BATCH_ENTRIES {
            return Err(LogError::BatchTooLarge);
        }
        // What we hold already (the same entries come from every member that has them):
        // nothing to check, nothing to roll back, no snapshot of the state to take.
        if batch.iter().all(|entry| self.entries.contains_key(&entry.hash())) {
            return Ok(0);
        }
        let snapshot = (self.order.clone(), self.heads.clone(), self.state.clone());
        let mut added = Vec::new();
        let mut dirty = false;
        let mut branch = None;
        for (index, entry) in batch.into_iter().enumerate() {
            match self.ingest_one(entry, &mut dirty, &mut branch) {
                Ok(Some(hash)) => added.push(hash),
                Ok(None) => {}
                Err(error) => {
                    for hash in &added {
                        self.entries.remove(hash);
                    }
                    (self.order, self.heads, self.state) = snapshot;
                    return Err(LogError::InBatch { index, error: Box::new(error) });
                }
            }
        }
        if dirty {
            self.refold();
        }
        Ok(added.len())
    }

    /// Admits a `Join` that a new device presents directly (not through sync): besides every
    /// ingestion rule, its invite must be unexpired by *this* node's clock and the time the
    /// joiner signed must be within [`MAX_JOIN_CLOCK_SKEW`] of it (INV-02).
    pub fn admit_join(&mut self, entry: Entry, now: u64) -> Result<(), LogError> {
        let Operation::Join { invite, .. } = entry.operation() else {
            return Err(RuleError::UnknownInvite.into());
        };
        let invite = self.state.invites.get(invite).ok_or(RuleError::UnknownInvite)?;
        if now > invite.expires {
            return Err(RuleError::InviteExpired.into());
        }
        if entry.contents().time.abs_diff(now) > MAX_JOIN_CLOCK_SKEW {
            return Err(LogError::ClockSkew);
        }
        self.ingest(vec![entry]).map(|_| ())
    }

    /// Decodes and ingests wire bytes (a sync batch): one bad entry rejects them all.
    pub fn ingest_encoded(&mut self, batch: &[Vec<u8>]) -> Result<usize, LogError> {
        self.ingest(decode_batch(batch)?)
    }

    /// Whether `ancestor` is `descendant` or one of its ancestors.
    pub fn is_ancestor(&self, ancestor: &EntryHash, descendant: &EntryHash) -> bool {
        self.ancestors_of([*descendant]).contains(ancestor)
    }

    /// The entry that revoked `device`, if one did.
    pub fn revocation_of(&self, device: &DeviceId) -> Option<EntryHash> {
        self.entries()
            .find(|e| matches!(e.operation(), Operation::RevokeDevice { device: revoked } if revoked == device))
            .map(Entry::hash)
    }

    /// `hashes` and every entry they descend from, among held entries.
    pub fn ancestors_of(&self, hashes: impl IntoIterator<Item = EntryHash>) -> BTreeSet<EntryHash> {
        ancestors(&self.entries, hashes)
    }

    /// `branch`: the last entry of this batch that was off our heads, and the fold of its
    /// causal past with it applied — so that the next entry on top of it alone (a branch
    /// arriving in order, as a healed partition's does) is checked without a fold.
    fn ingest_one(&mut self, entry: Entry, dirty: &mut bool, branch: &mut Option<(EntryHash, State)>) -> Result<Option<EntryHash>, LogError> {
        let hash = entry.hash();
        if self.entries.contains_key(&hash) {
            return Ok(None);
        }
        if matches!(entry.operation(), Operation::Genesis { .. }) {
            return Err(LogError::SecondGenesis);
        }
        if entry.contents().network != Some(self.network) {
            return Err(LogError::WrongNetwork);
        }
        if self.entries.len() >= MAX_LOG_ENTRIES {
            return Err(LogError::LogFull);
        }
        if !entry.parents().iter().all(|parent| self.entries.contains_key(parent)) {
            return Err(LogError::UnknownParent);
        }
        let on_heads = entry.parents().iter().copied().eq(self.heads.iter().copied());
        if on_heads {
            // Its causal past is the whole log, whose fold is the current state.
            if *dirty {
                self.refold();
                *dirty = false;
            }
            self.state.apply(&entry)?;
            self.order.push(hash);
        } else {
            // Its causal past is an ancestor-closed set whose only head is its parent, so its
            // fold is that parent's with the parent applied (as on our own heads above).
            let mut past_state = match branch.take() {
                Some((tip, state)) if entry.parents() == [tip] => state,
                _ => fold(&self.entries, &self.ancestors_of(entry.parents().iter().copied())).1,
            };
            past_state.apply(&entry)?;
            *branch = Some((hash, past_state));
            *dirty = true;
        }
        for parent in entry.parents() {
            self.heads.remove(parent);
        }
        self.heads.insert(hash);
        self.entries.insert(hash, entry);
        Ok(Some(hash))
    }

    fn refold(&mut self) {
        let all: BTreeSet<EntryHash> = self.entries.keys().copied().collect();
        (self.order, self.state) = fold(&self.entries, &all);
    }
}

/// Decodes a batch of wire entries; the first bad one fails the batch, with its index.
pub fn decode_batch(batch: &[Vec<u8>]) -> Result<Vec<Entry>, LogError> {
    if batch.len() > MAX_BATCH_ENTRIES {
        return Err(LogError::BatchTooLarge);
    }
    batch
        .iter()
        .enumerate()
        .map(|(index, bytes)| Entry::decode(bytes).map_err(|e| LogError::InBatch { index, error: Box::new(e.into()) }))
        .collect()
}

/// Topological order of `subset` (ancestor-closed), ties broken by hash, and its folded state.
///
/// Revocations are decided first, most senior author first (seniority: the position of the
/// entry that admitted the author), each checked with only the revocations already accepted
/// in force. An accepted revocation voids every entry of its target that is not its ancestor,
/// which also voids whatever authority the target handed out on that branch (an accomplice it
/// admitted, that accomplice's revocations). If a later decision voids an earlier winner, the
/// round restarts without it.
fn fold(entries: &BTreeMap<EntryHash, Entry>, subset: &BTreeSet<EntryHash>) -> (Vec<EntryHash>, State) {
    let order = topological_order(entries, subset);
    let revocations = revocations_by_seniority(entries, &order);
    // Each revocation's causal past: what an accepted one leaves of its target's entries.
    let pasts: BTreeMap<EntryHash, BTreeSet<EntryHash>> = revocations.iter().map(|r| (*r, ancestors(entries, [*r]))).collect();
    let targets: Vec<(DeviceId, &BTreeSet<EntryHash>)> = revocations
        .iter()
        .filter_map(|r| match entries.get(r).map(Entry::operation) {
            Some(Operation::RevokeDevice { device }) => Some((*device, &pasts[r])),
            _ => None,
        })
        .collect();
    // Every pass below skips only revocations and entries their targets wrote outside the
    // revocation's past: up to the first of those, all passes apply the same entries, so
    // that prefix (in a grown log, nearly all of it) is folded once.
    let skippable = |hash: &EntryHash| {
        pasts.contains_key(hash) || entries.get(hash).is_some_and(|e| targets.iter().any(|(target, past)| e.author() == *target && !past.contains(hash)))
    };
    let common = order.iter().position(skippable).unwrap_or(order.len());
    let (prefix, _) = fold_pass(entries, State::default(), &order[..common], &BTreeSet::new());
    if revocations.is_empty() {
        return (order, prefix);
    }
    let rest = &order[common..];
    let mut excluded = BTreeSet::new();
    let mut void = BTreeSet::new();
    for _ in 0..MAX_FOLD_PASSES {
        void = excluded.clone();
        let mut winners = Vec::new();
        for (i, revocation) in revocations.iter().enumerate() {
            if void.contains(revocation) {
                continue;
            }
            let mut undecided: BTreeSet<EntryHash> =
                revocations[i + 1..].iter().copied().filter(|r| !void.contains(r)).collect();
            undecided.extend(void.iter().copied());
            let (_, applied) = fold_pass(entries, prefix.clone(), rest, &undecided);
            if !applied.contains(revocation) {
                void.insert(*revocation);
                continue;
            }
            winners.push(*revocation);
            let Some(Operation::RevokeDevice { device: target }) = entries.get(revocation).map(Entry::operation) else {
                continue;
            };
            let before = &pasts[revocation];
            void.extend(
                rest
                    .iter()
                    .filter(|h| !before.contains(h))
                    .filter(|h| entries.get(h).is_some_and(|e| e.author() == *target)),
            );
        }
        let overturned: Vec<EntryHash> = winners.iter().copied().filter(|w| void.contains(w)).collect();
        if overturned.is_empty() {
            break;
        }
        excluded.extend(overturned);
    }
    let (state, _) = fold_pass(entries, prefix, rest, &void);
    (order, state)
}

/// One pass over `order` from `state`, skipping `void`: the state and the revocations that
/// applied.
fn fold_pass(
    entries: &BTreeMap<EntryHash, Entry>,
    mut state: State,
    order: &[EntryHash],
    void: &BTreeSet<EntryHash>,
) -> (State, BTreeSet<EntryHash>) {
    let mut applied = BTreeSet::new();
    for hash in order.iter().filter(|h| !void.contains(h)) {
        let Some(entry) = entries.get(hash) else { continue };
        if state.apply(entry).is_ok() && matches!(entry.operation(), Operation::RevokeDevice { .. }) {
            applied.insert(*hash);
        }
    }
    (state, applied)
}

/// Every revocation in `order`, most senior author first, then by hash.
fn revocations_by_seniority(entries: &BTreeMap<EntryHash, Entry>, order: &[EntryHash]) -> Vec<EntryHash> {
    let mut admitted_at: BTreeMap<DeviceId, usize> = BTreeMap::new();
    for (position, hash) in order.iter().enumerate() {
        if let Some(device) = entries.get(hash).and_then(admitted_device) {
            admitted_at.entry(device).or_insert(position);
        }
    }
    let mut revocations: Vec<(usize, EntryHash)> = order
        .iter()
        .filter_map(|hash| {
            let entry = entries.get(hash)?;
            matches!(entry.operation(), Operation::RevokeDevice { .. })
                .then(|| (admitted_at.get(&entry.author()).copied().unwrap_or(usize::MAX), *hash))
        })
        .collect();
    revocations.sort();
    revocations.into_iter().map(|(_, hash)| hash).collect()
}

fn admitted_device(entry: &Entry) -> Option<DeviceId> {
    match entry.operation() {
        Operation::Genesis { founder: device, .. }
        | Operation::AddDevice { device }
        | Operation::Join { device, .. } => Some(device.signing_key.device_id()),
        _ => None,
    }
}

fn topological_order(entries: &BTreeMap<EntryHash, Entry>, subset: &BTreeSet<EntryHash>) -> Vec<EntryHash> {
    // Looked up, never walked: hashed (the ready set alone decides the order).
    let mut waiting: HashMap<EntryHash, usize> = HashMap::with_capacity(subset.len());
    let mut children: HashMap<EntryHash, Vec<EntryHash>> = HashMap::with_capacity(subset.len());
    let mut ready = BTreeSet::new();
    for hash in subset {
        let Some(entry) = entries.get(hash) else { continue };
        let parents = entry.parents().iter().filter(|p| subset.contains(p)).count();
        if parents == 0 {
            ready.insert(*hash);
        } else {
            waiting.insert(*hash, parents);
        }
        for parent in entry.parents() {
            children.entry(*parent).or_default().push(*hash);
        }
    }
    let mut order = Vec::with_capacity(subset.len());
    while let Some(hash) = ready.pop_first() {
        order.push(hash);
        for child in children.get(&hash).into_iter().flatten() {
            if let Some(count) = waiting.get_mut(child) {
                *count -= 1;
                if *count == 0 {
                    waiting.remove(child);
                    ready.insert(*child);
                }
            }
        }
    }
    order
}

fn ancestors(entries: &BTreeMap<EntryHash, Entry>, start: impl IntoIterator<Item = EntryHash>) -> BTreeSet<EntryHash> {
    let mut seen = BTreeSet::new();
    let mut queue: VecDeque<EntryHash> = start.into_iter().collect();
    while let Some(hash) = queue.pop_front() {
        if !seen.insert(hash) {
            continue;
        }
        if let Some(entry) = entries.get(&hash) {
            queue.extend(entry.parents().iter().copied().filter(|p| !seen.contains(p)));
        }
    }
    seen
}
