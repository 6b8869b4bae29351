//! Crash-safe persistence of the log on redb.
//!
//! Every accepted batch is one redb write transaction holding the new entries (by hash and in
//! arrival order) and the new state, so a process killed at any instant reopens to exactly a
//! committed prefix (ML-12). Opening re-verifies every entry through the same ingestion as
//! the network path, and checks the stored state against the recomputed one.

use crate::entry::{Entry, Operation};
use crate::log::{Log, LogError, MAX_BATCH_ENTRIES};
use protocol::DeviceSigningKey;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;

const ENTRIES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("entries");
const ARRIVAL: TableDefinition<u64, &[u8; 32]> = TableDefinition::new("arrival");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const META_STATE: &str = "state";

/// A log and the database that holds it (none for [`Store::volatile`]).
#[derive(Debug)]
pub struct Store {
    db: Option<Database>,
    log: Log,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(String),
    #[error("stored log is invalid: {0}")]
    Invalid(#[from] LogError),
    #[error("stored log is empty")]
    Empty,
    #[error("stored state does not match the stored entries")]
    StateMismatch,
}

impl Store {
    /// Creates a database at `path` holding `genesis`.
    pub fn create(path: &Path, genesis: Entry) -> Result<Self, StoreError> {
        Self::init(Database::create(path).map_err(database_error)?, genesis)
    }

    /// A store in memory (tests, benchmarks).
    pub fn in_memory(genesis: Entry) -> Result<Self, StoreError> {
        let db = Database::builder().create_with_backend(redb::backends::InMemoryBackend::new()).map_err(database_error)?;
        Self::init(db, genesis)
    }

    /// A log kept in memory only, with no database at all: a simulation's thousand nodes of
    /// one network each hold the same log (its entries shared, see [`Entry`]) without a
    /// thousand databases. Nothing it ingests outlives the process.
    pub fn volatile(log: Log) -> Self {
        Self { db: None, log }
    }

    /// Opens an existing database and re-verifies everything in it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::open(path).map_err(database_error)?;
        let (log, stored_state) = {
            let read = db.begin_read().map_err(database_error)?;
            let entries = read.open_table(ENTRIES).map_err(database_error)?;
            let arrival = read.open_table(ARRIVAL).map_err(database_error)?;
            let mut hashes = Vec::new();
            for row in arrival.iter().map_err(database_error)? {
                let (_, hash) = row.map_err(database_error)?;
                hashes.push(*hash.value());
            }
            let mut encoded = hashes.iter().map(|hash| {
                let bytes = entries.get(hash).map_err(database_error)?.ok_or(StoreError::Empty)?;
                Ok::<_, StoreError>(bytes.value().to_vec())
            });
            let genesis = Entry::decode(&encoded.next().ok_or(StoreError::Empty)??).map_err(LogError::from)?;
            let mut log = Log::from_genesis(genesis)?;
            let rest: Vec<Vec<u8>> = encoded.collect::<Result<_, _>>()?;
            for chunk in rest.chunks(MAX_BATCH_ENTRIES) {
                log.ingest_encoded(chunk)?;
            }
            let meta = read.open_table(META).map_err(database_error)?;
            let state = meta.get(META_STATE).map_err(database_error)?.map(|v| v.value().to_vec());
            (log, state)
        };
        if stored_state.as_deref() != Some(log.state().encode().as_slice()) {
            return Err(StoreError::StateMismatch);
        }
        Ok(Self { db: Some(db), log })
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Appends a new entry (see [`Log::append`]) and commits it.
    pub fn append(
        &mut self,
        operation: Operation,
        author: &DeviceSigningKey,
        invite: Option<&DeviceSigningKey>,
        now: u64,
    ) -> Result<Entry, StoreError> {
        let entry = self.log.append(operation, author, invite, now)?;
        self.commit(std::slice::from_ref(&entry))?;
        Ok(entry)
    }

    /// Ingests a batch atomically (see [`Log::ingest`]) and commits what was new.
    pub fn ingest(&mut self, batch: Vec<Entry>) -> Result<usize, StoreError> {
        let fresh: Vec<Entry> = batch.iter().filter(|e| !self.log.contains(&e.hash())).cloned().collect();
        let added = self.log.ingest(batch)?;
        self.commit(&fresh)?;
        Ok(added)
    }

    /// Admits a join presented directly by a new device (see [`Log::admit_join`]) and commits it.
    pub fn admit_join(&mut self, entry: Entry, now: u64) -> Result<(), StoreError> {
        self.log.admit_join(entry.clone(), now)?;
        self.commit(&[entry])
    }

    /// Decodes and ingests a sync batch.
    pub fn ingest_encoded(&mut self, batch: &[Vec<u8>]) -> Result<usize, StoreError> {
        self.ingest(crate::log::decode_batch(batch)?)
    }

    fn init(db: Database, genesis: Entry) -> Result<Self, StoreError> {
        let log = Log::from_genesis(genesis.clone())?;
        let mut store = Self { db: Some(db), log };
        store.commit(&[genesis])?;
        Ok(store)
    }

    /// One write transaction: the entries in arrival order and the state they produce.
    fn commit(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        let Some(db) = &self.db else { return Ok(()) };
        let write = db.begin_write().map_err(database_error)?;
        {
            let mut table = write.open_table(ENTRIES).map_err(database_error)?;
            let mut arrival = write.open_table(ARRIVAL).map_err(database_error)?;
            let first = arrival.last().map_err(database_error)?.map_or(0, |(k, _)| k.value() + 1);
            for (position, entry) in (first..).zip(entries) {
                table.insert(&entry.hash().0, entry.encoded()).map_err(database_error)?;
                arrival.insert(position, &entry.hash().0).map_err(database_error)?;
            }
            let mut meta = write.open_table(META).map_err(database_error)?;
            meta.insert(META_STATE, self.log.state().encode().as_slice()).map_err(database_error)?;
        }
        write.commit().map_err(database_error)
    }
}

fn database_error(error: impl std::fmt::Display) -> StoreError {
    StoreError::Database(error.to_string())
}
