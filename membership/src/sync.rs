//! Log sync, sans-IO: each side sends a [`Summary`] (its heads and a sample of what it holds);
//! the other answers with [`missing_for`]: every entry the summary shows the peer lacks, in
//! fold order, in bounded batches that the receiver ingests atomically.
//!
//! The sample (the newest entries, then exponentially older ones, then genesis) lets two logs
//! that diverged find a recent common point in one round trip, as git's negotiation does,
//! instead of resending everything from genesis.

use crate::cbor::{CborError, Reader, Writer};
use crate::entry::{Entry, EntryHash, MAX_ENTRY_LEN, NetworkId};
use crate::log::{Log, MAX_BATCH_ENTRIES};
use std::collections::{BTreeSet, HashMap};

/// Hashes in a summary's sample.
pub const MAX_SAMPLE: usize = 64;
/// Heads a summary may list: honest logs have a handful.
pub const MAX_HEADS: usize = 64;
/// Bytes in one batch message, well under the request-response cap.
pub const MAX_BATCH_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub network: NetworkId,
    pub heads: Vec<EntryHash>,
    pub sample: Vec<EntryHash>,
}

/// One sync message on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncMessage {
    Summary(Summary),
    Entries(Vec<Vec<u8>>),
}

impl Log {
    /// What this log holds, for a peer to compute what we lack.
    pub fn summary(&self) -> Summary {
        let order = self.order();
        let mut sample = Vec::new();
        let mut back = 1usize;
        let mut step = 1usize;
        while back <= order.len() && sample.len() < MAX_SAMPLE - 1 {
            sample.push(order[order.len() - back]);
            if back > 16 {
                step *= 2;
            }
            back += step;
        }
        if let Some(genesis) = order.first()
            && !sample.contains(genesis)
        {
            sample.push(*genesis);
        }
        Summary { sample, ..self.heads_summary_in(order) }
    }

    /// The heads alone: enough for a peer to tell whether it lacks anything of ours
    /// ([`has_everything_of`] reads only them), at a tenth of a full summary's size; whoever
    /// is behind asks with its full one.
    pub fn heads_summary(&self) -> Summary {
        if self.heads().len() <= MAX_HEADS {
            // Already in order (a set), and none to leave out.
            return Summary { network: self.network(), heads: self.heads().iter().copied().collect(), sample: Vec::new() };
        }
        self.heads_summary_in(self.order())
    }

    fn heads_summary_in(&self, order: &[EntryHash]) -> Summary {
        // At most MAX_HEADS heads, the newest first (the decoder takes no more): a log forked
        // wider than that still syncs, because a full list makes the peer pull (below).
        let all = self.heads();
        let mut heads: Vec<EntryHash> = if all.len() <= MAX_HEADS {
            all.iter().copied().collect()
        } else {
            // The newest are the last in fold order (no map of every entry's position: this
            // runs for every summary sent).
            let mut newest: Vec<EntryHash> = order.iter().rev().filter(|h| all.contains(*h)).take(MAX_HEADS).copied().collect();
            newest.extend(all.iter().filter(|h| !order.contains(h)).take(MAX_HEADS - newest.len()));
            newest
        };
        heads.sort();
        Summary { network: self.network(), heads, sample: Vec::new() }
    }
}

/// The entries `peer` lacks, in fold order, as bounded batches of wire bytes.
pub fn missing_for(log: &Log, peer: &Summary) -> Vec<Vec<Vec<u8>>> {
    missing_within(log, peer, None)
}

/// What a revoked device is sent: the entries it lacks up to and including `horizon` (its
/// revocation), so that it can verify it was revoked, and nothing appended since — who joined
/// the network afterwards is none of its business.
pub fn missing_up_to(log: &Log, peer: &Summary, horizon: EntryHash) -> Vec<Vec<Vec<u8>>> {
    missing_within(log, peer, Some(&log.ancestors_of([horizon])))
}

fn missing_within(log: &Log, peer: &Summary, within: Option<&BTreeSet<EntryHash>>) -> Vec<Vec<Vec<u8>>> {
    if peer.network != log.network() {
        return Vec::new();
    }
    let lacking = lacking(log, peer.heads.iter().chain(&peer.sample).copied().filter(|h| log.contains(h)));
    let mut batches = Vec::new();
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let mut bytes = 0;
    let entries = lacking.iter().filter(|h| within.is_none_or(|w| w.contains(h))).filter_map(|h| log.get(h));
    for entry in entries {
        if batch.len() == MAX_BATCH_ENTRIES || bytes + entry.encoded().len() > MAX_BATCH_BYTES {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += entry.encoded().len();
        batch.push(entry.encoded().to_vec());
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

/// The entries of `log` that are not `known` nor an ancestor of one, in fold order.
///
/// Painted down from the end of the fold order, as git finds what a fetch lacks: every entry
/// is ours (an ancestor of our heads), and one reached from a known entry is known. Walking
/// the order backwards meets each entry after all its descendants, so its mark is final when
/// met; the walk stops once no entry still to meet is marked ours alone. Only the entries back
/// to the common past are visited — a peer that lacks the last few of a thousand costs a few,
/// not a walk of everything it holds (issue #17).
fn lacking(log: &Log, known: impl Iterator<Item = EntryHash>) -> Vec<EntryHash> {
    const OURS: u8 = 1;
    const KNOWN: u8 = 2;
    let mut marks: HashMap<EntryHash, u8> = HashMap::new();
    for head in log.heads() {
        *marks.entry(*head).or_default() |= OURS;
    }
    for hash in known {
        *marks.entry(hash).or_default() |= KNOWN;
    }
    // Entries marked ours alone and not met yet.
    let mut pending = marks.values().filter(|m| **m == OURS).count();
    let mut lacking = Vec::new();
    for hash in log.order().iter().rev() {
        if pending == 0 {
            break;
        }
        let Some(mark) = marks.get(hash).copied() else { continue };
        if mark == OURS {
            pending -= 1;
            lacking.push(*hash);
        }
        for parent in log.get(hash).map(Entry::parents).unwrap_or_default() {
            let parent = marks.entry(*parent).or_default();
            let was_pending = *parent == OURS;
            *parent |= mark;
            match (was_pending, *parent == OURS) {
                (false, true) => pending += 1,
                (true, false) => pending -= 1,
                _ => {}
            }
        }
    }
    lacking.reverse();
    lacking
}

/// Whether every head of `peer` is already in `log` (nothing to fetch). A full list of heads
/// may have been cut short, so it never says so.
pub fn has_everything_of(log: &Log, peer: &Summary) -> bool {
    peer.heads.len() < MAX_HEADS && peer.heads.iter().all(|h| log.contains(h))
}

impl SyncMessage {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            SyncMessage::Summary(summary) => {
                w.array(4);
                w.u64(0);
                w.bytes(&summary.network.0);
                hashes(&mut w, &summary.heads);
                hashes(&mut w, &summary.sample);
            }
            SyncMessage::Entries(entries) => {
                w.array(2);
                w.u64(1);
                w.array(entries.len());
                for entry in entries {
                    w.bytes(entry);
                }
            }
        }
        w.finish()
    }

    /// Decodes with every bound checked before allocation (ROB-01).
    pub fn decode(bytes: &[u8]) -> Result<Self, CborError> {
        if bytes.len() > MAX_BATCH_BYTES + 64 * 1024 {
            return Err(CborError::TooLong);
        }
        let mut r = Reader::new(bytes);
        let len = r.array_up_to(4)?;
        let message = match (r.u64()?, len) {
            (0, 4) => SyncMessage::Summary(Summary {
                network: NetworkId(r.fixed_bytes::<32>()?),
                heads: read_hashes(&mut r, MAX_HEADS)?,
                sample: read_hashes(&mut r, MAX_SAMPLE)?,
            }),
            (1, 2) => {
                let count = r.array_up_to(MAX_BATCH_ENTRIES)?;
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    let entry = r.bytes()?;
                    if entry.len() > MAX_ENTRY_LEN {
                        return Err(CborError::TooLong);
                    }
                    entries.push(entry.to_vec());
                }
                SyncMessage::Entries(entries)
            }
            _ => return Err(CborError::UnexpectedLength),
        };
        r.finish()?;
        if message.encode() != bytes {
            return Err(CborError::NonCanonical);
        }
        Ok(message)
    }
}

fn hashes(w: &mut Writer, hashes: &[EntryHash]) {
    w.array(hashes.len());
    for hash in hashes {
        w.bytes(&hash.0);
    }
}

fn read_hashes(r: &mut Reader<'_>, max: usize) -> Result<Vec<EntryHash>, CborError> {
    let count = r.array_up_to(max)?;
    let hashes: Vec<EntryHash> = (0..count).map(|_| r.fixed_bytes::<32>().map(EntryHash)).collect::<Result<_, _>>()?;
    let unique: BTreeSet<_> = hashes.iter().collect();
    if unique.len() != hashes.len() {
        return Err(CborError::NonCanonical);
    }
    Ok(hashes)
}
