//! Where a core's membership comes from: a member holds the whole log ([`Store`]); a guest
//! holds only its view ([`membership::guest`]) and the state those few entries prove.

use membership::guest::{self, ViewError};
use membership::{Log, NetworkId, State, Store};
use protocol::DeviceId;

pub enum Book {
    /// A member: the whole signed log.
    Log(Store),
    /// A guest: what members showed it of the log.
    Guest(GuestBook),
}

impl std::fmt::Debug for Book {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_guest() { "Book::Guest" } else { "Book::Log" })
    }
}

impl From<Store> for Book {
    fn from(store: Store) -> Self {
        Book::Log(store)
    }
}

impl From<GuestBook> for Book {
    fn from(book: GuestBook) -> Self {
        Book::Guest(book)
    }
}

/// What a guest cannot do: every change of the network is an admin's.
pub const GUEST_CANNOT: &str = "this device is a guest of the network: only its owner's admin devices can change it";

impl Book {
    pub fn state(&self) -> &State {
        match self {
            Book::Log(store) => store.log().state(),
            Book::Guest(book) => &book.state,
        }
    }

    pub fn network(&self) -> NetworkId {
        match self {
            Book::Log(store) => store.log().network(),
            Book::Guest(book) => book.network,
        }
    }

    /// The device that founded the network (its id seeds the overlay's IPv6 prefix).
    pub fn founder(&self) -> Option<DeviceId> {
        match self {
            Book::Log(store) => store.log().founder(),
            Book::Guest(book) => book.founder,
        }
    }

    /// The whole log, which only a member holds.
    pub fn log(&self) -> Option<&Log> {
        match self {
            Book::Log(store) => Some(store.log()),
            Book::Guest(_) => None,
        }
    }

    pub fn store_mut(&mut self) -> Result<&mut Store, String> {
        match self {
            Book::Log(store) => Ok(store),
            Book::Guest(_) => Err(GUEST_CANNOT.into()),
        }
    }

    pub fn is_guest(&self) -> bool {
        matches!(self, Book::Guest(_))
    }
}

/// A guest's view, checked, and the state it proves.
#[derive(Debug, Clone)]
pub struct GuestBook {
    network: NetworkId,
    me: DeviceId,
    founder: Option<DeviceId>,
    view: Vec<Vec<u8>>,
    state: State,
}

impl GuestBook {
    /// The view a guest got when it joined (or kept on disk), checked against its network.
    pub fn new(network: NetworkId, me: DeviceId, view: Vec<Vec<u8>>) -> Result<Self, ViewError> {
        let state = guest::verify(&network, &me, &view)?;
        let founder = founder_of(&view);
        Ok(GuestBook { network, me, founder, view, state })
    }

    /// A newer view from a member: kept (with what only grows of the old one) when it checks;
    /// whether the state changed.
    pub fn update(&mut self, view: Vec<Vec<u8>>) -> Result<bool, ViewError> {
        let merged = guest::merge(&self.me, &self.view, view);
        let state = guest::verify(&self.network, &self.me, &merged)?;
        let changed = state != self.state;
        self.founder = founder_of(&merged);
        self.view = merged;
        self.state = state;
        Ok(changed)
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// The entries to keep on disk.
    pub fn view(&self) -> &[Vec<u8>] {
        &self.view
    }
}

fn founder_of(view: &[Vec<u8>]) -> Option<DeviceId> {
    view.iter().filter_map(|bytes| membership::Entry::decode(bytes).ok()).find(|e| e.parents().is_empty()).map(|genesis| genesis.author())
}

/// A guest's view on disk: CBOR `[network id, [entry...]]` (the id is the invite code's, the
/// one thing the entries are checked against).
pub fn encode_view(network: &NetworkId, view: &[Vec<u8>]) -> Vec<u8> {
    let entries: Vec<minicbor::bytes::ByteVec> = view.iter().cloned().map(Into::into).collect();
    minicbor::to_vec((minicbor::bytes::ByteArray::from(network.0), entries)).unwrap_or_default()
}

pub fn decode_view(bytes: &[u8]) -> Result<(NetworkId, Vec<Vec<u8>>), String> {
    let (network, entries): (minicbor::bytes::ByteArray<32>, Vec<minicbor::bytes::ByteVec>) =
        minicbor::decode(bytes).map_err(|e| format!("the guest view on disk is damaged ({e}); join again with a new invite"))?;
    Ok((NetworkId(*network), entries.into_iter().map(|e| e.to_vec()).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_on_disk_round_trips() {
        let network = NetworkId([7; 32]);
        let view = vec![vec![1, 2, 3], vec![4]];
        assert_eq!(decode_view(&encode_view(&network, &view)).unwrap(), (network, view));
        assert!(decode_view(b"garbage").unwrap_err().contains("join again"));
    }
}
