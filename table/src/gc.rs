//! Garbage collection of table files (SPEC §6: "files of failed commits are
//! garbage-collected"): the extents and manifests under `tables/{table_id}/` that no snapshot
//! needs any more — files of failed or abandoned commits, extents replaced by compaction or a
//! `TRUNCATE`, old manifests, and everything of dropped tables.
//!
//! # The invariant
//!
//! **A file is deleted only when it is older than the grace (its object's last-modified time)
//! and neither a commit in flight nor a query in flight can still need it.** In particular the
//! current manifest of every table and every extent it lists are never deleted, however old.
//!
//! This rests on a contract with writers and readers, with `G` the grace
//! ([`GcOptions::grace`], default [`DEFAULT_GRACE`], 6 hours):
//!
//! 1. a writer commits within `G/2` of writing its first file (a [`crate::TableWriter`]
//!    ingest, a sync batch, a compaction — which abandons past
//!    [`crate::compaction::CompactionOptions::max_duration`]), **or** registers its write in
//!    the catalog ([`kyma_catalog::OpenWrite`], under its lease) before `G/2` has passed and
//!    commits with the registration (the commit compares it, so a write whose registration
//!    lapsed never commits). A long snapshot or a huge source transaction has no deadline:
//!    sync batches register;
//! 2. a query holds a snapshot (from reading the catalog's pointer to reading its last
//!    extent) for at most `G/2`;
//! 3. the clocks of this process, the object store and the committing processes (the
//!    catalog's `committed_at_ms`) agree to well within `G`.
//!
//! # What is kept, per table the catalog has
//!
//! - every object modified within the grace;
//! - every object of a table with a registered open write, modified at or after the write
//!   started (less `G/2` for clock skew);
//! - the current manifest and every extent it lists;
//! - when the current snapshot was committed less than `G/2` ago (queries may still hold
//!   older snapshots): every manifest of versions `m-1` and `m`, and every extent they list,
//!   where `m` is the highest version (up to the current one) among the manifests written
//!   more than `G/2` ago;
//! - objects it does not recognise.
//!
//! Everything else under `extents/` and `manifests/` goes.
//!
//! # Why that is safe
//!
//! - **Commits in flight.** A writer writes its files, then commits (a compare-and-swap on the
//!   snapshot it built on). By (1) every file of a commit in flight is younger than `G/2`, so
//!   it is kept — or its write registered before `G/2` passed, so before this collection
//!   read the registrations (which it does first), and its files are kept as long as the
//!   registration lives; once the registration lapses the write can no longer commit. A commit installs only files it wrote itself and extents of the snapshot it
//!   replaces, so an extent once absent from a table's current snapshot never returns: each
//!   extent is live over one interval of snapshot versions.
//! - **Queries in flight.** A query that may still run read its snapshot `v` less than `G/2`
//!   ago (2). If the current snapshot was committed earlier than that, `v` is the current
//!   one. Else `v ≥ m-1`: a manifest of version `m` is built on snapshot `m-1`, so that was
//!   committed before the manifest was written, more than `G/2` ago, while `v+1` was committed
//!   less than `G/2` ago. An extent older than `G` was committed (if ever) in a snapshot
//!   `j ≤ m` by (1), so if it is live in some `v ≥ m-1` it is live in `m-1` or `m`, whose
//!   manifests are kept. A manifest of a version below `m-1` was superseded more than `G/2`
//!   ago.
//! - **Dropped tables.** The first collection that finds a table id under `tables/` that the
//!   catalog lacks writes a marker object `tables/{table_id}/dropped`; once the marker is
//!   older than the grace, a later collection deletes every object of that table older than
//!   the grace, and the marker last. So queries that read the table just before the drop
//!   finish first. A table created after a collection read the catalog has only files younger
//!   than the collection; the next collection finds it in the catalog and deletes the stale
//!   marker.
//!
//! # Cost
//!
//! A collection lists every object under `tables/`, one table at a time, loads each table's
//! current manifest, and, only for a table with old extents outside it, the manifests of
//! versions `m-1` and `m`.

use std::collections::{HashMap, HashSet};
use std::ops::RangeInclusive;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use kyma_catalog::{Catalog, TableState};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt, PutPayload};
use uuid::Uuid;

use crate::error::TableError;
use crate::manifest::{ExtentEntry, Manifest};
use crate::store::ExtentStore;
use crate::writer::current_manifest;

/// The default grace: generous against slow commits and long queries (each may take up to
/// half of it), cheap in storage (garbage lives at most this much longer).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(6 * 3600);

/// Where the tables' files live (see [`crate::store`]).
const TABLES: &str = "tables";
/// The marker of a table id the catalog no longer has.
const DROPPED_MARKER: &str = "dropped";

/// Settings of one collection.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Nothing younger is deleted, and writers and queries must each finish within half of it
    /// (see the module docs). Default [`DEFAULT_GRACE`].
    pub grace: Duration,
    /// The time ages are measured at; `None`: the wall clock at the call.
    pub now: Option<SystemTime>,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            grace: DEFAULT_GRACE,
            now: None,
        }
    }
}

/// What a collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcSummary {
    /// Table directories examined.
    pub tables: u64,
    /// Objects listed in them.
    pub objects: u64,
    /// Objects deleted.
    pub deleted: u64,
    /// Their bytes.
    pub bytes_deleted: u64,
    /// Objects outside the current manifests kept only because they are younger than the
    /// grace (commits in flight, files replaced recently).
    pub kept_young: u64,
    /// Dropped tables found for the first time (marked; their files go after the grace).
    pub dropped_tables_marked: u64,
    /// Dropped tables whose files are all gone now.
    pub dropped_tables_removed: u64,
    /// Old objects outside the current manifests kept for a registered open write.
    pub kept_for_open_writes: u64,
}

/// Deletes the files no snapshot needs any more (see the module docs for what is kept and
/// why that is safe).
pub async fn collect_garbage(
    catalog: &Catalog,
    store: &ExtentStore,
    options: &GcOptions,
) -> Result<GcSummary, TableError> {
    let clock = Clock::new(options);
    // Registrations first: a write older than the grace registered before this read.
    let mut open_since: HashMap<Uuid, i64> = HashMap::new();
    for write in catalog.open_writes().await? {
        for id in write.table_ids {
            let since = open_since.entry(id).or_insert(write.started_at_ms);
            *since = (*since).min(write.started_at_ms);
        }
    }
    let (_, tables) = catalog.list_tables(None).await?;
    let live: HashMap<Uuid, TableState> = tables.into_iter().map(|t| (t.meta.id, t)).collect();
    let dirs = store
        .object_store()
        .list_with_delimiter(Some(&Path::from(TABLES)))
        .await?
        .common_prefixes;
    let mut summary = GcSummary::default();
    for dir in dirs {
        // Not a table id: not ours to judge.
        let Some(id) = dir.filename().and_then(|name| Uuid::parse_str(name).ok()) else {
            continue;
        };
        let objects: Vec<TableObject> = store
            .object_store()
            .list(Some(&dir))
            .map_ok(|meta| TableObject::of(&dir, meta))
            .try_collect()
            .await?;
        summary.tables += 1;
        summary.objects += objects.len() as u64;
        match live.get(&id) {
            Some(state) => {
                let garbage = live_garbage(store, state, &objects, &clock, &mut summary).await?;
                let garbage = spare_open_writes(garbage, open_since.get(&id), &clock, &mut summary);
                delete(store, &garbage, &mut summary).await?;
            }
            None => collect_dropped(store, &dir, &objects, &clock, &mut summary).await?,
        }
    }
    tracing::info!(?summary, "garbage collection done");
    Ok(summary)
}

/// The horizons of one collection, in Unix milliseconds.
#[derive(Debug, Clone, Copy)]
struct Clock {
    /// Objects modified at or before this are older than the grace.
    old_at_or_before: i64,
    /// Queries may hold snapshots that were current at or after this (now minus half the
    /// grace).
    readers_since: i64,
    /// The grace.
    grace_ms: i64,
}

impl Clock {
    fn new(options: &GcOptions) -> Self {
        let now = options
            .now
            .unwrap_or_else(SystemTime::now)
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let grace = i64::try_from(options.grace.as_millis()).unwrap_or(i64::MAX);
        Self {
            old_at_or_before: now.saturating_sub(grace),
            readers_since: now.saturating_sub(grace / 2),
            grace_ms: grace,
        }
    }

    fn is_old(&self, object: &TableObject) -> bool {
        object.modified_ms() <= self.old_at_or_before
    }
}

/// What an object under `tables/{table_id}/` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `extents/{uuid}.parquet`
    Extent,
    /// `manifests/{version:020}-{uuid}.json`, of this snapshot version.
    Manifest(u64),
    /// The dropped-table marker.
    DroppedMarker,
    /// Anything else: never deleted while the table exists.
    Unknown,
}

/// One object of a table directory.
#[derive(Debug)]
struct TableObject {
    kind: Kind,
    meta: ObjectMeta,
}

impl TableObject {
    fn of(dir: &Path, meta: ObjectMeta) -> Self {
        let parts: Vec<String> = meta
            .location
            .prefix_match(dir)
            .map(|parts| parts.map(|p| p.as_ref().to_owned()).collect())
            .unwrap_or_default();
        let kind = match parts.as_slice() {
            // An extent, or the deleted rows of one (`crate::deletes`): kept while listed.
            [dir, name]
                if dir == "extents"
                    && (name.ends_with(".parquet") || name.ends_with(".deleted")) =>
            {
                Kind::Extent
            }
            [dir, name] if dir == "manifests" && name.ends_with(".json") => name
                .split_once('-')
                .and_then(|(version, _)| version.parse().ok())
                .map_or(Kind::Unknown, Kind::Manifest),
            [name] if name == DROPPED_MARKER => Kind::DroppedMarker,
            _ => Kind::Unknown,
        };
        Self { kind, meta }
    }

    fn path(&self) -> &str {
        self.meta.location.as_ref()
    }

    fn modified_ms(&self) -> i64 {
        self.meta.last_modified.timestamp_millis()
    }
}

/// The snapshot versions whose manifests (and extents) queries in flight may still read,
/// besides the current one: `m-1..=m` where `m` is the highest version up to `current`
/// among manifests written at or before `readers_since`; none when the current snapshot was
/// committed before that (see the module docs). `manifests` are (version, modified) pairs.
fn reader_versions(
    manifests: impl Iterator<Item = (u64, i64)>,
    current: u64,
    committed_at_ms: i64,
    readers_since: i64,
) -> Option<RangeInclusive<u64>> {
    if committed_at_ms < readers_since {
        return None;
    }
    let m = manifests
        .filter(|&(version, modified)| version <= current && modified <= readers_since)
        .map(|(version, _)| version)
        .max()?;
    Some(m.saturating_sub(1)..=m)
}

/// The garbage of a table the catalog has.
async fn live_garbage<'a>(
    store: &ExtentStore,
    state: &TableState,
    objects: &'a [TableObject],
    clock: &Clock,
    summary: &mut GcSummary,
) -> Result<Vec<&'a TableObject>, TableError> {
    let current = current_manifest(store, state).await?;
    let mut keep: HashSet<&str> = current
        .extents
        .iter()
        .flat_map(ExtentEntry::objects)
        .collect();
    keep.extend(state.snapshot.value.manifest.as_deref());
    summary.kept_young += objects
        .iter()
        .filter(|o| !clock.is_old(o) && !keep.contains(o.path()))
        .count() as u64;

    let versions = reader_versions(
        objects.iter().filter_map(|o| match o.kind {
            Kind::Manifest(version) => Some((version, o.modified_ms())),
            _ => None,
        }),
        state.snapshot.value.version,
        state.snapshot.value.committed_at_ms,
        clock.readers_since,
    );
    let held: Vec<&TableObject> = objects
        .iter()
        .filter(|o| matches!((o.kind, &versions), (Kind::Manifest(v), Some(range)) if range.contains(&v)))
        .collect();
    keep.extend(held.iter().map(|o| o.path()));
    let old_extent_outside = objects
        .iter()
        .any(|o| o.kind == Kind::Extent && clock.is_old(o) && !keep.contains(o.path()));
    let mut held_extents = HashSet::new();
    if old_extent_outside {
        for manifest in &held {
            let manifest = Manifest::load(store, manifest.path()).await?;
            held_extents.extend(
                manifest
                    .extents
                    .iter()
                    .flat_map(ExtentEntry::objects)
                    .map(str::to_owned),
            );
        }
    }
    Ok(objects
        .iter()
        .filter(|o| match o.kind {
            // A marker of a table the catalog has: stale (see the module docs).
            Kind::DroppedMarker => true,
            Kind::Extent | Kind::Manifest(_) => {
                clock.is_old(o) && !keep.contains(o.path()) && !held_extents.contains(o.path())
            }
            Kind::Unknown => false,
        })
        .collect())
}

/// `garbage` less the objects a registered open write of the table may have written: those
/// modified at or after `since` (the write's start), less half the grace for clock skew.
fn spare_open_writes<'a>(
    garbage: Vec<&'a TableObject>,
    since: Option<&i64>,
    clock: &Clock,
    summary: &mut GcSummary,
) -> Vec<&'a TableObject> {
    let Some(since) = since else {
        return garbage;
    };
    let from = since.saturating_sub(clock.grace_ms / 2);
    let (spared, garbage): (Vec<_>, Vec<_>) = garbage
        .into_iter()
        .partition(|o| o.kind == Kind::Extent && o.modified_ms() >= from);
    summary.kept_for_open_writes += spared.len() as u64;
    garbage
}

/// A table id the catalog lacks: marks it, or once the mark is older than the grace deletes
/// its old objects (and the mark when nothing else is left).
async fn collect_dropped(
    store: &ExtentStore,
    dir: &Path,
    objects: &[TableObject],
    clock: &Clock,
    summary: &mut GcSummary,
) -> Result<(), TableError> {
    let Some(marker) = objects.iter().find(|o| o.kind == Kind::DroppedMarker) else {
        store
            .object_store()
            .put(
                &dir.clone().join(DROPPED_MARKER),
                PutPayload::from(Bytes::from_static(
                    b"this table id is no longer in the catalog; its files are deleted once this marker is older than the garbage collector's grace\n",
                )),
            )
            .await?;
        summary.dropped_tables_marked += 1;
        summary.kept_young += objects.iter().filter(|o| !clock.is_old(o)).count() as u64;
        return Ok(());
    };
    if !clock.is_old(marker) {
        summary.kept_young += objects.iter().filter(|o| !clock.is_old(o)).count() as u64;
        return Ok(());
    }
    let (garbage, young): (Vec<&TableObject>, Vec<&TableObject>) = objects
        .iter()
        .filter(|o| o.kind != Kind::DroppedMarker)
        .partition(|o| clock.is_old(o));
    delete(store, &garbage, summary).await?;
    summary.kept_young += young.len() as u64;
    if young.is_empty() {
        delete(store, &[marker], summary).await?;
        summary.dropped_tables_removed += 1;
    }
    Ok(())
}

/// Deletes `objects` (ones already gone count as deleted: another collection got there
/// first).
async fn delete(
    store: &ExtentStore,
    objects: &[&TableObject],
    summary: &mut GcSummary,
) -> Result<(), TableError> {
    if objects.is_empty() {
        return Ok(());
    }
    let paths: Vec<object_store::Result<Path>> = objects
        .iter()
        .map(|o| Ok(o.meta.location.clone()))
        .collect();
    let mut results = store
        .object_store()
        .delete_stream(futures::stream::iter(paths).boxed());
    while let Some(result) = results.next().await {
        match result {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    summary.deleted += objects.len() as u64;
    summary.bytes_deleted += objects.iter().map(|o| o.meta.size).sum::<u64>();
    tracing::debug!(count = objects.len(), "deleted unreferenced table files");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HORIZON: i64 = 1_000_000;

    #[test]
    fn a_snapshot_current_since_before_the_reader_horizon_holds_nothing_else() {
        let manifests = [(1, HORIZON - 10), (2, HORIZON - 5)];
        assert_eq!(
            reader_versions(manifests.into_iter(), 2, HORIZON - 5, HORIZON),
            None
        );
    }

    #[test]
    fn a_recent_commit_keeps_the_two_versions_around_the_horizon() {
        // Versions 1-4 written before the horizon, 5-7 after; 8 is above the current version
        // (an attempt that never committed), so it is not a snapshot anyone read.
        let manifests = [
            (1, HORIZON - 40),
            (2, HORIZON - 30),
            (3, HORIZON - 20),
            (4, HORIZON - 10),
            (5, HORIZON + 10),
            (6, HORIZON + 20),
            (7, HORIZON + 30),
            (8, HORIZON - 1),
        ];
        assert_eq!(
            reader_versions(manifests.into_iter(), 7, HORIZON + 30, HORIZON),
            Some(3..=4)
        );
        // Only young manifests: nothing older than the current one was committed before the
        // horizon, so no old extent can be live in a held snapshot.
        assert_eq!(
            reader_versions(manifests[4..7].iter().copied(), 7, HORIZON + 30, HORIZON),
            None
        );
    }

    #[test]
    fn objects_are_classified_by_their_place_in_the_layout() {
        let dir = Path::from("tables/0190a5e4-0000-7000-8000-000000000000");
        let kind = |rest: &str| {
            TableObject::of(
                &dir,
                ObjectMeta {
                    location: Path::from(format!("{dir}/{rest}")),
                    last_modified: Default::default(),
                    size: 0,
                    e_tag: None,
                    version: None,
                },
            )
            .kind
        };
        assert_eq!(kind("extents/x.parquet"), Kind::Extent);
        assert_eq!(
            kind("manifests/00000000000000000012-0190a5e4.json"),
            Kind::Manifest(12)
        );
        assert_eq!(kind("dropped"), Kind::DroppedMarker);
        assert_eq!(kind("manifests/latest.json"), Kind::Unknown);
        assert_eq!(kind("other/x.parquet"), Kind::Unknown);
    }
}
