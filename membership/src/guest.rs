//! A guest's view of the network: the few signed entries that prove what it may reach, and
//! nothing else of the log (SECURITY-TESTS GUEST-02).
//!
//! A member serves a guest ([`view_for`]): the guest's own admission, the devices shared with
//! it, every CloudPal (its relay and, if the policy says so, its exit), the entry that set its
//! shares, the revocations of any of these, and for each the chain of admissions back to the
//! genesis that proves its signer was an admin. The guest checks every signature and that
//! chain against the network id of its invite code ([`verify`]), so a member can withhold
//! news but never make a device up. What the guest does not get: the other devices, the other
//! guests and their shares, invites, the policy, the network secret.
//!
//! Views are replaced, not merged, except for what only ever grows: revocations, and the
//! newest entry setting this guest's shares (so a stale view from a slow member can neither
//! bring back a revoked device nor undo an unshare).

use crate::entry::{DeviceRecord, Entry, EntryError, EntryHash, NetworkId, Operation, Role};
use crate::log::Log;
use crate::state::{DeviceState, DeviceStatus, GuestShares, State};
use protocol::DeviceId;
use std::collections::{BTreeMap, BTreeSet};

/// Entries in one view: a guest with every device of a full network shared needs far less.
pub const MAX_VIEW_ENTRIES: usize = 256;

/// Why a view was refused; each reads as one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    #[error("a guest view entry is not valid: {0}")]
    Entry(#[from] EntryError),
    #[error("a guest view has more than {MAX_VIEW_ENTRIES} entries")]
    TooLarge,
    #[error("a guest view is from another network")]
    WrongNetwork,
    #[error("a guest view does not prove this device is a guest of the network")]
    NotListed,
}

/// What `guest` is served: its entries in fold order, or `None` when it is no guest here.
pub fn view_for(log: &Log, guest: &DeviceId) -> Option<Vec<Vec<u8>>> {
    let state = log.state();
    let me = state.devices.get(guest).filter(|d| d.record.role == Role::Guest)?;
    let mut queue: Vec<DeviceId> = vec![*guest];
    let mut wanted: BTreeSet<EntryHash> = BTreeSet::new();
    if me.status == DeviceStatus::Active {
        let cloudpals = state.devices.iter().filter(|(_, d)| d.record.role == Role::CloudPal).map(|(id, _)| *id);
        queue.extend(cloudpals);
        if let Some(shares) = state.shares.get(guest) {
            queue.extend(shares.shares.iter().map(|s| s.device));
            if let Some(entry) = log.get(&shares.set_by) {
                wanted.insert(entry.hash());
                queue.push(entry.author());
            }
        }
    }
    let mut seen = BTreeSet::new();
    while let Some(device) = queue.pop() {
        if !seen.insert(device) {
            continue;
        }
        let Some(held) = state.devices.get(&device) else { continue };
        let admitted = log.get(&held.admitted_by)?;
        wanted.insert(admitted.hash());
        match admitted.operation() {
            Operation::AddDevice { .. } => queue.push(admitted.author()),
            Operation::Join { invite, .. } => {
                let invite = log.get(invite)?;
                wanted.insert(invite.hash());
                queue.push(invite.author());
            }
            _ => {}
        }
        if held.status == DeviceStatus::Revoked
            && let Some(revocation) = log.revocation_of(&device).and_then(|hash| log.get(&hash))
        {
            wanted.insert(revocation.hash());
            queue.push(revocation.author());
        }
    }
    let view: Vec<Vec<u8>> = log.entries().filter(|e| wanted.contains(&e.hash())).map(|e| e.encoded().to_vec()).collect();
    (view.len() <= MAX_VIEW_ENTRIES).then_some(view)
}

/// A guest's membership state from a view, checked against its network id: the devices whose
/// admission chains to the genesis, those revoked by a proven admin, and its own shares.
pub fn verify(network: &NetworkId, me: &DeviceId, view: &[Vec<u8>]) -> Result<State, ViewError> {
    if view.len() > MAX_VIEW_ENTRIES {
        return Err(ViewError::TooLarge);
    }
    let entries = view.iter().map(|bytes| Entry::decode(bytes)).collect::<Result<Vec<Entry>, _>>()?;
    let by_hash: BTreeMap<EntryHash, &Entry> = entries.iter().map(|e| (e.hash(), e)).collect();
    let mut state = State::default();
    state.network = Some(*network);
    let mut proven: BTreeMap<DeviceId, (DeviceRecord, EntryHash)> = BTreeMap::new();
    for entry in &entries {
        match (entry.operation(), entry.contents().network) {
            (Operation::Genesis { .. }, None) if NetworkId::from(entry.hash()) == *network => {}
            (Operation::Genesis { .. }, _) => return Err(ViewError::WrongNetwork),
            (_, Some(n)) if n == *network => {}
            _ => return Err(ViewError::WrongNetwork),
        }
    }
    // Admissions, until nothing new is proven (a chain may come in any order).
    let admin = |proven: &BTreeMap<DeviceId, (DeviceRecord, EntryHash)>, id: &DeviceId| proven.get(id).is_some_and(|(r, _)| r.role == Role::Admin);
    loop {
        let before = proven.len();
        for entry in &entries {
            let admitted = match entry.operation() {
                Operation::Genesis { network_name, founder } => {
                    state.network_name = network_name.clone();
                    Some(founder)
                }
                Operation::AddDevice { device } if admin(&proven, &entry.author()) => Some(device),
                Operation::Join { invite, invite_key, device } => by_hash.get(invite).and_then(|invite| match invite.operation() {
                    Operation::Invite { invite_key: key, role, .. } if key == invite_key && *role == device.role && admin(&proven, &invite.author()) => Some(device),
                    _ => None,
                }),
                _ => None,
            };
            if let Some(device) = admitted {
                proven.entry(device.signing_key.device_id()).or_insert_with(|| (device.clone(), entry.hash()));
            }
        }
        if proven.len() == before {
            break;
        }
    }
    let revoked: BTreeSet<DeviceId> = entries
        .iter()
        .filter_map(|e| match e.operation() {
            Operation::RevokeDevice { device } if admin(&proven, &e.author()) => Some(*device),
            _ => None,
        })
        .collect();
    match proven.get(me) {
        Some((record, _)) if record.role == Role::Guest => {}
        _ => return Err(ViewError::NotListed),
    }
    // The newest entry that set our shares: our join (the invite's), or a `Share` by an admin.
    let mut set_by: Option<(u64, EntryHash, Vec<crate::Share>)> = None;
    for entry in &entries {
        let shares = match entry.operation() {
            Operation::Join { invite, device, .. } if device.signing_key.device_id() == *me && proven.get(me).is_some_and(|(_, h)| *h == entry.hash()) => {
                match by_hash.get(invite).map(|i| i.operation()) {
                    Some(Operation::Invite { shares, .. }) => Some(shares.clone()),
                    _ => None,
                }
            }
            Operation::Share { guest, shares } if guest == me && admin(&proven, &entry.author()) => Some(shares.clone()),
            _ => None,
        };
        if let Some(shares) = shares {
            let key = (entry.contents().time, entry.hash());
            if set_by.as_ref().is_none_or(|(t, h, _)| key > (*t, *h)) {
                set_by = Some((key.0, key.1, shares));
            }
        }
    }
    for (id, (record, admitted_by)) in proven {
        let status = if revoked.contains(&id) { DeviceStatus::Revoked } else { DeviceStatus::Active };
        if status == DeviceStatus::Revoked {
            state.revoked_keys.insert(*record.signing_key.as_bytes());
            state.revoked_keys.insert(*record.static_key.as_bytes());
        }
        state.devices.insert(id, DeviceState { record, status, admitted_by });
    }
    if let Some((_, hash, shares)) = set_by {
        state.shares.insert(*me, GuestShares { shares, set_by: hash });
    }
    Ok(state)
}

/// The view to keep when `new` arrives over `old`: `new`, plus what of `old` only ever
/// grows (revocations, and a newer entry setting `me`'s shares).
pub fn merge(me: &DeviceId, old: &[Vec<u8>], new: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut merged = new;
    let held: BTreeSet<Vec<u8>> = merged.iter().cloned().collect();
    for bytes in old {
        if held.contains(bytes) {
            continue;
        }
        let keep = Entry::decode(bytes).is_ok_and(|e| match e.operation() {
            Operation::RevokeDevice { .. } => true,
            Operation::Share { guest, .. } => guest == me,
            _ => false,
        });
        if keep && merged.len() < MAX_VIEW_ENTRIES {
            merged.push(bytes.clone());
        }
    }
    merged
}
