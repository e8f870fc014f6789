//! MongoDB sync's hand-off and history-lost rules, driven through the `ChangeSource` seam by
//! a deterministic in-process deployment (no MongoDB server can be installed here; the
//! real-server suites run when `KYMA_TEST_MONGODB_URL` is set). The deployment keeps an
//! oplog of change events with cluster times and resume tokens shaped as MongoDB's, answers
//! snapshot reads at a cluster time by replaying it, and can truncate its history.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use kyma_catalog::ConnectorSpec;
use kyma_connectors::ConnectorError;
use kyma_connectors::mongodb::Topology;
use kyma_connectors::mongodb::schema::{Collection, Shape, ShapeOptions};
use kyma_connectors::mongodb::sync::MongoChangeSource;
use kyma_connectors::mongodb::sync::deployment::{
    ChangeFeed, Chunk, Deployment, FeedError, FullDocument, ReadError, SnapshotRead, StreamStart,
};
use kyma_connectors::mongodb::sync::position::ClusterTime;
use kyma_connectors::mongodb::sync::ranges::Bracket;
use kyma_connectors::sync::{
    Cell, ChangeOp, ChangeSource, Fence, SourceEvent, SourcePosition, SourceTable, TableId,
};
use kyma_table::KymaValue;
use mongodb::bson::{Bson, Document, Timestamp, doc};

/// The one collection of these tests.
fn orders() -> TableId {
    TableId::new("app", "orders")
}

/// An event's resume token at cluster time `time` (an event sorts after the high-water mark
/// of its own time, as the server's do).
fn token(time: ClusterTime, event: bool) -> String {
    format!(
        "82{:08X}{:08X}{}",
        time.0,
        time.1,
        if event { "04" } else { "" }
    )
}

/// One oplog entry: its time and change event.
#[derive(Clone)]
struct Entry {
    time: ClusterTime,
    event: Document,
}

#[derive(Default)]
struct State {
    oplog: Vec<Entry>,
    clock: u32,
    /// Events at or before this time are gone from the oplog.
    truncated_through: Option<ClusterTime>,
    /// Writes the next snapshot call makes first (between the stream's opening and the
    /// snapshot's time).
    before_snapshot: Vec<Write>,
    /// The documents a sample sees (the first `sample` ones).
    sample: usize,
    /// A snapshot session gives out (error 239) after this many documents.
    gives_out_after: Option<usize>,
    /// Writes made before each ranged read (one entry per read).
    before_ranges: Vec<Vec<Write>>,
}

#[derive(Clone)]
enum Write {
    Insert(Document),
    Update { id: i32, set: Document, full: bool },
    Delete(i32),
}

/// The in-process deployment.
#[derive(Clone, Default)]
struct FakeDeployment(Arc<Mutex<State>>);

impl FakeDeployment {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().expect("state")
    }

    /// Applies `writes` as one transaction when `txn` is set, else one by one.
    fn write(&self, writes: &[Write], txn: Option<i64>) {
        let mut state = self.state();
        let mut time = (0, 0);
        for (i, write) in writes.iter().enumerate() {
            if txn.is_none() || i == 0 {
                state.clock += 1;
                time = (1000, state.clock);
            }
            let current = documents_at(&state.oplog, time);
            let mut event = change_event(write, &current, time);
            if let Some(number) = txn {
                event.insert("lsid", doc! { "id": "session" });
                event.insert("txnNumber", number);
                // Events of one transaction share its time; their tokens differ after it.
                let data = format!("{}{i:02}", token(time, true));
                event.insert("_id", doc! { "_data": data });
            }
            state.oplog.push(Entry { time, event });
        }
    }

    fn now(&self) -> ClusterTime {
        (1000, self.state().clock)
    }
}

/// The collection's documents as of `time`, by `_id`.
fn documents_at(oplog: &[Entry], time: ClusterTime) -> BTreeMap<i32, Document> {
    let mut documents = BTreeMap::new();
    for entry in oplog.iter().filter(|e| e.time <= time) {
        let id = entry
            .event
            .get_document("documentKey")
            .ok()
            .and_then(|k| k.get_i32("_id").ok())
            .unwrap_or_default();
        match entry.event.get_str("operationType") {
            Ok("delete") => {
                documents.remove(&id);
            }
            _ => {
                if let Ok(full) = entry.event.get_document("kyma_state") {
                    documents.insert(id, full.clone());
                }
            }
        }
    }
    documents
}

/// The change event of `write` at `time` (with the document's state after it, for the
/// fake's own replay, under `kyma_state`).
fn change_event(write: &Write, current: &BTreeMap<i32, Document>, time: ClusterTime) -> Document {
    let (op, id, state, full) = match write {
        Write::Insert(document) => {
            let id = document.get_i32("_id").expect("an int _id");
            ("insert", id, Some(document.clone()), true)
        }
        Write::Update { id, set, full } => {
            let mut after = current
                .get(id)
                .cloned()
                .unwrap_or_else(|| doc! { "_id": id });
            for (k, v) in set {
                after.insert(k, v.clone());
            }
            ("update", *id, Some(after), *full)
        }
        Write::Delete(id) => ("delete", *id, None, false),
    };
    let mut event = doc! {
        "_id": { "_data": token(time, true) },
        "operationType": op,
        "clusterTime": Timestamp { time: time.0, increment: time.1 },
        "ns": { "db": "app", "coll": "orders" },
        "documentKey": { "_id": id },
    };
    if let Some(state) = &state {
        event.insert("kyma_state", state.clone());
        if full {
            event.insert("fullDocument", state.clone());
        }
    }
    if let Write::Update {
        set, full: false, ..
    } = write
    {
        event.insert(
            "updateDescription",
            doc! { "updatedFields": set.clone(), "removedFields": [] },
        );
    }
    event
}

#[async_trait]
impl Deployment for FakeDeployment {
    async fn topology(&self) -> Result<Topology, ConnectorError> {
        Ok(Topology::ReplicaSet("rs0".into()))
    }

    async fn missing_privileges(&self, _: &[String]) -> Result<Vec<String>, ConnectorError> {
        Ok(Vec::new())
    }

    async fn collections(&self) -> Result<Vec<Collection>, ConnectorError> {
        let state = self.state();
        let documents = documents_at(&state.oplog, (1000, state.clock));
        let sampled: Vec<&Document> = documents.values().take(state.sample).collect();
        Ok(vec![Collection {
            id: orders(),
            shape: Shape::infer(ShapeOptions::default(), sampled),
            estimated_rows: documents.len() as u64,
            images: false,
        }])
    }

    async fn watch(
        &self,
        start: StreamStart,
        _: FullDocument,
    ) -> Result<Box<dyn ChangeFeed>, FeedError> {
        let state = self.state();
        let after = match start {
            // As the server does, a new stream starts after everything already written.
            StreamStart::Now => token((1000, state.clock + 1), false),
            StreamStart::After(token) => token,
        };
        if let Some(gone) = state.truncated_through
            && after < token(gone, true)
        {
            return Err(FeedError::HistoryLost(
                "Executor error during getMore :: caused by :: Resume of change stream was not possible, as the resume point may no longer be in the oplog (ChangeStreamHistoryLost, error 286)".into(),
            ));
        }
        Ok(Box::new(FakeFeed {
            deployment: self.clone(),
            after,
        }))
    }

    async fn read_range(
        &self,
        _: &TableId,
        bracket: Bracket,
        after: Option<&Bson>,
        limit: usize,
    ) -> Result<Chunk, ConnectorError> {
        let writes = {
            let mut state = self.state();
            if state.before_ranges.is_empty() {
                Vec::new()
            } else {
                state.before_ranges.remove(0)
            }
        };
        self.write(&writes, None);
        let time = self.now();
        let after = after.and_then(Bson::as_i32);
        let documents = match bracket {
            Bracket::Integer => documents_at(&self.state().oplog, time)
                .into_iter()
                .filter(|(id, _)| after.is_none_or(|a| *id > a))
                .map(|(_, d)| d)
                .take(limit)
                .collect(),
            _ => Vec::new(),
        };
        Ok(Chunk { time, documents })
    }

    async fn other_id_type(&self, _: &TableId) -> Result<Option<String>, ConnectorError> {
        Ok(None)
    }

    async fn snapshot(&self) -> Result<Box<dyn SnapshotRead>, ConnectorError> {
        let writes = std::mem::take(&mut self.state().before_snapshot);
        self.write(&writes, None);
        Ok(Box::new(FakeSnapshot {
            deployment: self.clone(),
            time: self.now(),
        }))
    }
}

struct FakeFeed {
    deployment: FakeDeployment,
    /// The token of what was delivered last.
    after: String,
}

#[async_trait]
impl ChangeFeed for FakeFeed {
    async fn next(&mut self) -> Result<Option<Document>, FeedError> {
        let state = self.deployment.state();
        let next = state.oplog.iter().find(|e| {
            let data = e
                .event
                .get_document("_id")
                .ok()
                .and_then(|i| i.get_str("_data").ok());
            data.is_some_and(|d| d > self.after.as_str())
        });
        match next {
            Some(entry) => {
                let mut event = entry.event.clone();
                event.remove("kyma_state");
                self.after = event
                    .get_document("_id")
                    .ok()
                    .and_then(|i| i.get_str("_data").ok())
                    .unwrap_or_default()
                    .to_owned();
                Ok(Some(event))
            }
            None => {
                self.after = token((1000, state.clock), false).max(self.after.clone());
                Ok(None)
            }
        }
    }

    fn resume_token(&self) -> Option<String> {
        Some(self.after.clone())
    }
}

struct FakeSnapshot {
    deployment: FakeDeployment,
    time: ClusterTime,
}

#[async_trait]
impl SnapshotRead for FakeSnapshot {
    fn cluster_time(&self) -> ClusterTime {
        self.time
    }

    async fn documents<'a>(
        &'a mut self,
        _: &'a TableId,
    ) -> Result<BoxStream<'a, Result<Document, ReadError>>, ConnectorError> {
        let documents = documents_at(&self.deployment.state().oplog, self.time);
        let gives_out_after = self
            .deployment
            .state()
            .gives_out_after
            .unwrap_or(usize::MAX);
        let read = documents.into_values().map(Ok).take(gives_out_after);
        let too_old = (gives_out_after != usize::MAX)
            .then(|| Err(ReadError::TooOld("SnapshotTooOld (error 239)".into())));
        Ok(futures::stream::iter(read.chain(too_old)).boxed())
    }
}

struct Unfenced;

#[async_trait]
impl Fence for Unfenced {
    async fn check(&self, _: &str) -> Result<(), ConnectorError> {
        Ok(())
    }
}

fn spec() -> ConnectorSpec {
    serde_json::from_value(serde_json::json!({
        "name": "mg", "type": "mongodb", "mode": "sync",
        "connection": { "url": "mongodb://kyma@db/app" },
        "scope": { "include_schemas": ["app"] },
    }))
    .expect("spec")
}

fn order(id: i32, qty: i32) -> Write {
    Write::Insert(doc! { "_id": id, "qty": qty })
}

/// Every row of the table's copy, as `(_id, qty)` text.
async fn copy_rows(
    snapshot: &mut dyn kyma_connectors::sync::Snapshot,
    table: &SourceTable,
) -> Result<Vec<(String, String)>, ConnectorError> {
    let mut batches = snapshot.copy(table, 2).await?;
    let mut rows = Vec::new();
    while let Some(batch) = batches.next().await {
        let batch = batch?;
        for row in 0..batch.num_rows() {
            let cell = |c: usize| {
                arrow::util::display::array_value_to_string(batch.column(c), row).expect("display")
            };
            rows.push((cell(0), cell(1)));
        }
    }
    Ok(rows)
}

/// The stream's events up to its first idle point.
async fn until_idle(stream: &mut dyn kyma_connectors::sync::ChangeStream) -> Vec<SourceEvent> {
    let mut events = Vec::new();
    loop {
        let event = stream.next().await.expect("an event").expect("no error");
        let idle = matches!(event, SourceEvent::Idle { .. });
        events.push(event);
        if idle {
            return events;
        }
    }
}

fn begins(events: &[SourceEvent]) -> Vec<SourcePosition> {
    events
        .iter()
        .filter_map(|e| match e {
            SourceEvent::Begin { position, .. } => Some(position.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn the_snapshot_and_the_stream_meet_without_gap_or_duplicate() {
    let deployment = FakeDeployment::default();
    deployment.state().sample = 100;
    deployment.write(&[order(1, 10), order(2, 20), order(3, 30)], None);
    // Written after the stream opened and before the snapshot's time: in the copy, and in
    // the stream, where they must be dropped.
    deployment.state().before_snapshot = vec![
        order(4, 40),
        Write::Update {
            id: 1,
            set: doc! { "qty": 11 },
            full: true,
        },
    ];
    let mut source = MongoChangeSource::with_deployment(&spec(), Box::new(deployment.clone()));
    source.preflight().await.expect("preflight");
    let tables = source.discover().await.expect("discover");
    assert_eq!(tables.len(), 1);
    let prepared = source
        .prepare(&[&tables[0]], None, &Unfenced)
        .await
        .expect("prepare");
    assert_eq!(prepared.source_id, "replica set rs0");
    let mut snapshot = prepared.initial.expect("a first snapshot");
    let mark = snapshot.position().clone();
    assert!(mark.0.starts_with("snapshot:1000.5/"), "{mark}");
    let rows = copy_rows(snapshot.as_mut(), &tables[0])
        .await
        .expect("copy");
    let expected: Vec<(String, String)> = [("1", "11"), ("2", "20"), ("3", "30"), ("4", "40")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(rows, expected);
    snapshot.close().await.expect("close");

    // After the copy: a single change, a two-statement transaction, a delete.
    deployment.write(&[order(5, 50)], None);
    deployment.write(
        &[
            order(6, 60),
            Write::Update {
                id: 2,
                set: doc! { "qty": 21 },
                full: true,
            },
        ],
        Some(7),
    );
    deployment.write(&[Write::Delete(3)], None);

    let mut stream = source.stream(&mark).await.expect("stream");
    let events = until_idle(stream.as_mut()).await;
    let covered: Vec<bool> = begins(&events)
        .iter()
        .map(|b| source.covers(&mark, b).expect("covers"))
        .collect();
    assert_eq!(
        covered,
        [true, true, false, false, false],
        "the two changes before the snapshot's time are in the copy"
    );
    let rows: Vec<(ChangeOp, Cell)> = events
        .iter()
        .filter_map(|e| match e {
            SourceEvent::Row(row) => Some((row.op, row.cells[0].clone())),
            _ => None,
        })
        .collect();
    let key = |k: &str| Cell::Value(KymaValue::String(k.into()));
    assert_eq!(
        rows[2..],
        [
            (ChangeOp::Insert, key("5")),
            (ChangeOp::Insert, key("6")),
            (ChangeOp::Update, key("2")),
            (ChangeOp::Delete, key("3"))
        ]
    );
    // The transaction is one Begin … Commit.
    let shape: Vec<&str> = events
        .iter()
        .skip_while(|e| !matches!(e, SourceEvent::Row(r) if r.cells[0] == key("6")))
        .map(|e| match e {
            SourceEvent::Row(_) => "row",
            SourceEvent::Commit { .. } => "commit",
            SourceEvent::Begin { .. } => "begin",
            SourceEvent::Idle { .. } => "idle",
            _ => "other",
        })
        .collect();
    assert_eq!(
        shape,
        ["row", "row", "commit", "begin", "row", "commit", "idle"]
    );
    // The idle point holds everything delivered, so committing it keeps the token fresh.
    let Some(SourceEvent::Idle {
        position: Some(idle),
        ..
    }) = events.last()
    else {
        panic!("no idle position");
    };
    let last_begin = begins(&events).pop().expect("a begin");
    assert!(source.covers(idle, &last_begin).expect("covers"));
}

#[tokio::test]
async fn a_lost_history_fails_closed_naming_the_policy() {
    let deployment = FakeDeployment::default();
    deployment.state().sample = 100;
    deployment.write(&[order(1, 10)], None);
    let mut source = MongoChangeSource::with_deployment(&spec(), Box::new(deployment.clone()));
    let tables = source.discover().await.expect("discover");
    let prepared = source
        .prepare(&[&tables[0]], None, &Unfenced)
        .await
        .expect("prepare");
    let mark = prepared.initial.expect("snapshot").position().clone();
    deployment.write(&[order(2, 20), order(3, 30)], None);
    deployment.state().truncated_through = Some(deployment.now());
    let Err(e) = source.stream(&mark).await else {
        panic!("resumed over a gap");
    };
    assert!(matches!(e, ConnectorError::HistoryLost(_)), "{e:?}");
    assert!(!e.is_retryable());
    let text = e.to_string();
    assert!(
        text.contains("retention.on_history_lost") && text.contains("replSetResizeOplog"),
        "{text}"
    );
}

#[tokio::test]
async fn a_copy_that_meets_unsampled_fields_widens_and_copies_again() {
    let deployment = FakeDeployment::default();
    deployment.state().sample = 1;
    deployment.write(
        &[
            order(1, 10),
            Write::Insert(doc! { "_id": 2, "qty": 20, "note": "rush" }),
        ],
        None,
    );
    let mut source = MongoChangeSource::with_deployment(&spec(), Box::new(deployment.clone()));
    let tables = source.discover().await.expect("discover");
    assert_eq!(
        tables[0].columns.len(),
        2,
        "the sample saw only the first document"
    );
    let mut snapshot = source.snapshot(&Unfenced).await.expect("snapshot");
    let e = copy_rows(snapshot.as_mut(), &tables[0])
        .await
        .expect_err("the copy cannot hold `note`");
    assert!(
        matches!(e, ConnectorError::Changed(_)) && e.is_retryable(),
        "{e:?}"
    );
    let tables = source.discover().await.expect("discover again");
    let names: Vec<&str> = tables[0].columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["_id", "qty", "note"]);
    let mut snapshot = source.snapshot(&Unfenced).await.expect("snapshot");
    assert_eq!(
        copy_rows(snapshot.as_mut(), &tables[0])
            .await
            .expect("copy")
            .len(),
        2
    );
}

#[tokio::test]
async fn an_update_without_its_document_sends_the_changed_fields_only() {
    let deployment = FakeDeployment::default();
    deployment.state().sample = 100;
    deployment.write(
        &[Write::Insert(doc! { "_id": 1, "qty": 10, "status": "new" })],
        None,
    );
    let mut source = MongoChangeSource::with_deployment(&spec(), Box::new(deployment.clone()));
    let tables = source.discover().await.expect("discover");
    let mark = source
        .prepare(&[&tables[0]], None, &Unfenced)
        .await
        .expect("prepare")
        .initial
        .expect("snapshot")
        .position()
        .clone();
    deployment.write(
        &[Write::Update {
            id: 1,
            set: doc! { "status": "paid", "paid_at": Bson::Int64(7) },
            full: false,
        }],
        None,
    );
    let mut stream = source.stream(&mark).await.expect("stream");
    let events = until_idle(stream.as_mut()).await;
    let relation = events.iter().rev().find_map(|e| match e {
        SourceEvent::Relation { columns, .. } => {
            Some(columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>())
        }
        _ => None,
    });
    assert_eq!(
        relation,
        Some(vec![
            "_id".to_string(),
            "qty".into(),
            "status".into(),
            "paid_at".into()
        ]),
        "the new field widens the table first"
    );
    let cells = events.iter().rev().find_map(|e| match e {
        SourceEvent::Row(row) => Some(row.cells.clone()),
        _ => None,
    });
    assert_eq!(
        cells,
        Some(vec![
            Cell::Value(KymaValue::String("1".into())),
            Cell::Unchanged,
            Cell::Value(KymaValue::String("paid".into())),
            Cell::Value(KymaValue::Long(7)),
        ])
    );
}

/// The rows of `table`'s copy plus the streamed changes the copy does not hold, as
/// `_id` → `qty` text (what kyma ends up with), and the keys of the changes applied.
async fn copy_and_apply(
    source: &MongoChangeSource,
    copied: Vec<(String, String)>,
    since: &SourcePosition,
    events: &[SourceEvent],
) -> (BTreeMap<String, String>, Vec<String>) {
    let mut rows: BTreeMap<String, String> = copied.into_iter().collect();
    let mut applied = Vec::new();
    let mut begin = None;
    for event in events {
        match event {
            SourceEvent::Begin { position, .. } => begin = Some(position.clone()),
            SourceEvent::Row(row) => {
                let txn = begin.as_ref().expect("a transaction");
                if source.covers_row(since, txn, row).expect("covers") {
                    continue;
                }
                let text = |cell: &Cell| match cell {
                    Cell::Value(KymaValue::String(s)) => s.clone(),
                    Cell::Value(KymaValue::Int(n)) => n.to_string(),
                    other => format!("{other:?}"),
                };
                let id = text(&row.cells[0]);
                applied.push(id.clone());
                match row.op {
                    ChangeOp::Delete => {
                        rows.remove(&id);
                    }
                    _ => {
                        rows.insert(id, text(&row.cells[1]));
                    }
                }
            }
            _ => {}
        }
    }
    (rows, applied)
}

#[tokio::test]
async fn a_copy_past_the_snapshot_history_goes_on_in_id_ranges_each_exact_per_key() {
    let deployment = FakeDeployment::default();
    deployment.state().sample = 100;
    deployment.write(
        &[order(1, 10), order(2, 20), order(3, 30), order(5, 50)],
        None,
    );
    // The session gives out after ids 1 and 2, read at its time; before the ranged read,
    // a key the session read changes (only the stream has it), and keys after it change
    // (the range read holds them).
    deployment.state().gives_out_after = Some(2);
    deployment.state().before_ranges = vec![vec![
        Write::Update {
            id: 1,
            set: doc! { "qty": 11 },
            full: true,
        },
        Write::Update {
            id: 5,
            set: doc! { "qty": 55 },
            full: true,
        },
        order(7, 70),
        Write::Delete(3),
    ]];
    let mut source = MongoChangeSource::with_deployment(&spec(), Box::new(deployment.clone()));
    let tables = source.discover().await.expect("discover");
    let prepared = source
        .prepare(&[&tables[0]], None, &Unfenced)
        .await
        .expect("prepare");
    let mut snapshot = prepared.initial.expect("snapshot");
    let position = snapshot.position().clone();
    let copied = copy_rows(snapshot.as_mut(), &tables[0])
        .await
        .expect("copy");
    let since = snapshot.since(&orders());
    assert!(
        since.0.starts_with("ranges:"),
        "the copy stands at its ranges: {since}"
    );
    snapshot.close().await.expect("close");
    // After the copy: more changes on both sides of the session's last key.
    deployment.write(
        &[
            Write::Update {
                id: 2,
                set: doc! { "qty": 22 },
                full: true,
            },
            order(9, 90),
        ],
        None,
    );
    let mut stream = source.stream(&position).await.expect("stream");
    let events = until_idle(stream.as_mut()).await;
    let (synced, applied) = copy_and_apply(&source, copied, &since, &events).await;
    // Key 1 changed after the session read it; 5, 7 and 3 changed before the range read
    // them (already in the copy); 2 and 9 changed after the copy.
    assert_eq!(
        applied,
        ["1", "2", "9"],
        "each change applied once, where the copy lacks it"
    );
    let now = deployment.now();
    let truth: BTreeMap<String, String> = documents_at(&deployment.state().oplog, now)
        .into_iter()
        .map(|(id, d)| (id.to_string(), d.get_i32("qty").expect("qty").to_string()))
        .collect();
    assert_eq!(synced, truth, "nothing lost, nothing applied twice");
}
