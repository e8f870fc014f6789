//! The MongoDB fixture: a fresh database on the replica set `KYMA_TEST_MONGODB_URL` names.
//!
//! These run ONLY against a real MongoDB replica set (or sharded cluster): the harness cannot
//! run one here, so without `KYMA_TEST_MONGODB_URL` every test prints a `SKIP` line
//! ([`kyma_test_harness::mongodb_url_or_skip`]) and returns. For the same reason there is no
//! private server ([`SourceFixture::private`] is `None`): a server the harness does not run
//! cannot be restarted or crashed.
//!
//! - **Tables** are collections `accounts` and `items` in a fresh database (the schema),
//!   created empty. A row's key is its `_id`: `accounts` has the `id` as an Int64 `_id`,
//!   `items` a document `{owner: Int64, n: Int32}`; the key columns are not stored again
//!   beside it. Other columns are fields, in column order, NULL stored as BSON null: Int64 →
//!   Int64, Int32 → Int32, Bool → Boolean, Text → String, Decimal → Decimal128 with two
//!   places, Timestamp → Date.
//! - **Transactions** run in a session transaction (committed or aborted). An update is a
//!   pipeline update (`$set` stage) so that `Set::Add` (`$add`) and `Set::Flip` (`$not` of
//!   `$ifNull`) keep NULL as NULL as SQL does, and every `$set` of one update reads the
//!   document before it, as SQL's `SET` does; values set are `$literal`s. An update that
//!   sets a key column cannot change `_id`: it applies its other columns, then deletes the
//!   selected documents and inserts them again under their new `_id`, in the same
//!   transaction. `Select::First` reads the `_id`s first (sorted by `_id`, which for the
//!   `items` document sorts by `owner`, then `n`).
//! - **Rows** are read with the driver, independently of kyma's sync, and converted the way
//!   kyma converts documents: a shape inferred from every document with the connector's own
//!   [`Shape::infer`] and [`DocumentBatcher`], keyed by [`key_text`] of `_id` (kyma's
//!   `_kyma_pk`). kyma's shape is sampled and widened as documents arrive; it equals the
//!   shape of all current documents unless a kind seen once is no longer held by any
//!   document (the suites' workloads keep every kind: `price` always holds fractional
//!   values, so it reads as `real` on both sides).
//! - **Catching up**: [`SourceFixture::write_position`] is the cluster time of a no-op write
//!   (an `$inc` in database `<database>_marks`, out of the connector's scope, so that it
//!   never shows as a table); a committed cursor at that cluster time or later (an event's
//!   or an idle post-batch resume token's, or a snapshot's) holds every change before it.
//! - The database and its marks are dropped when the fixture is, unless the test failed
//!   (then they are kept, and named, for a look).

use futures::TryStreamExt;
use kyma_catalog::ConnectorState;
use kyma_connectors::mongodb::schema::{Shape, ShapeOptions};
use kyma_connectors::mongodb::sync::position::MongoPosition;
use kyma_connectors::mongodb::values::{DocumentBatcher, key_text};
use kyma_connectors::sync::SourcePosition;
use kyma_table::synced;
use mongodb::bson::{Bson, DateTime, Decimal128, Document, doc};
use mongodb::error::{Error as DriverError, ErrorKind};
use mongodb::options::ClientOptions;
use mongodb::{Client, ClientSession, Collection, Database};

use super::{Kind, Op, Select, Set, SourceFixture, Table, Transaction, Value};
use crate::common::sync::{Rows, row_values};

/// MongoDB's longest database name, in bytes.
const MAX_DATABASE_NAME: usize = 63;

/// Appended to the database's name for the database of the no-op writes.
const MARKS_SUFFIX: &str = "_marks";

/// A fresh database on the MongoDB deployment `KYMA_TEST_MONGODB_URL` names.
pub struct MongoSource {
    /// `KYMA_TEST_MONGODB_URL` with the database as its path.
    url: String,
    database: String,
}

/// A session that runs transactions, and whether its connection broke.
pub struct Session {
    client: Client,
    database: Database,
    broken: bool,
}

impl MongoSource {
    /// The database's name (the schema of its collections in kyma).
    pub fn database(&self) -> &str {
        &self.database
    }

    /// A client of the deployment (made per call: a client belongs to the runtime it was
    /// made on, and the fixture is used from several).
    async fn client(&self) -> Client {
        client(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connect to MongoDB at {}: {e}", self.url))
    }

    /// How the connector reads the documents (its scope's options).
    fn shape_options(&self) -> ShapeOptions {
        let spec: kyma_catalog::ConnectorSpec =
            serde_json::from_value(self.connector("rows")).expect("a connector spec");
        ShapeOptions::of(&spec.scope).expect("the connector's shape options")
    }

    /// Collection `table`'s documents, read with the driver, as kyma reads them.
    pub async fn rows_of(&self, table: &str) -> Rows {
        let client = self.client().await;
        let documents: Vec<Document> = client
            .database(&self.database)
            .collection::<Document>(table)
            .find(doc! {})
            .await
            .expect("find the documents")
            .try_collect()
            .await
            .expect("read the documents");
        rows(self.shape_options(), &documents)
    }
}

/// A client of the deployment at `url`, after a `ping`.
async fn client(url: &str) -> Result<Client, DriverError> {
    let client = Client::with_options(ClientOptions::parse(url).await?)?;
    client
        .database("admin")
        .run_command(doc! { "ping": 1 })
        .await?;
    Ok(client)
}

/// `documents` as kyma reads them, keyed by `_kyma_pk`: a shape inferred from all of them,
/// each converted by the connector's [`DocumentBatcher`].
pub fn rows(options: ShapeOptions, documents: &[Document]) -> Rows {
    if documents.is_empty() {
        return Rows::new();
    }
    let shape = Shape::infer(options, documents);
    let mut batcher = DocumentBatcher::for_columns(shape.columns().to_vec(), documents.len());
    let mut keys = Vec::with_capacity(documents.len());
    for document in documents {
        batcher.push(document).expect("a readable document");
        keys.push(key_text(document.get("_id").expect("an _id")));
    }
    let batch = batcher.finish().expect("a batch");
    // `row_values` reads the key from `_kyma_pk`, as in kyma's extents.
    let mut fields: Vec<arrow::datatypes::Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(arrow::datatypes::Field::new(
        synced::PK,
        arrow::datatypes::DataType::Utf8,
        false,
    ));
    let mut columns = batch.columns().to_vec();
    columns.push(std::sync::Arc::new(arrow::array::StringArray::from(keys)));
    let keyed = arrow::array::RecordBatch::try_new(
        std::sync::Arc::new(arrow::datatypes::Schema::new(fields)),
        columns,
    )
    .expect("a keyed batch");
    row_values(&keyed).into_iter().collect()
}

/// `name` as a fresh database name: unique in the run, only `[A-Za-z0-9_-]` (MongoDB
/// refuses `/\. "$` and NUL), short enough for its marks database's name too.
fn database_name(name: &str) -> String {
    let unique = kyma_test_harness::unique_name(name);
    let clean: String = unique
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '-' => c,
            _ => '_',
        })
        .collect();
    let room = MAX_DATABASE_NAME - MARKS_SUFFIX.len();
    // Keep the unique tail (process and counter) when the name is long.
    if clean.len() > room {
        clean[clean.len() - room..].to_owned()
    } else {
        clean
    }
}

/// `url` with `database` as its path (the client's default database), its options kept.
fn with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url
        .split_once("://")
        .unwrap_or_else(|| panic!("KYMA_TEST_MONGODB_URL is not a MongoDB URL: {url}"));
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (hosts, tail) = rest.split_at(end);
    let query = tail.find('?').map_or("", |q| &tail[q..]);
    format!("{scheme}://{hosts}/{database}{query}")
}

impl SourceFixture for MongoSource {
    const NAME: &'static str = "mongodb";

    type Session = Session;

    fn shared(name: &str) -> Option<Self> {
        let base = kyma_test_harness::mongodb_url_or_skip(&format!("mongodb::{name}"))?;
        let database = database_name(name);
        Some(Self {
            url: with_database(&base, &database),
            database,
        })
    }

    fn private(name: &str) -> Option<Self> {
        kyma_test_harness::mongodb_url_or_skip(&format!("mongodb::{name}"))?;
        eprintln!(
            "SKIP mongodb::{name}: it restarts and crashes its source, and the harness does not run the MongoDB server KYMA_TEST_MONGODB_URL names"
        );
        None
    }

    fn url(&self) -> String {
        self.url.clone()
    }

    fn connector(&self, name: &str) -> serde_json::Value {
        let lower = self.url.to_ascii_lowercase();
        let tls = if lower.contains("tls=true") || lower.contains("ssl=true") {
            "required"
        } else {
            "disable"
        };
        serde_json::json!({
            "name": name,
            "type": "mongodb",
            "mode": "sync",
            "connection": {"url": self.url, "tls": tls},
            "scope": {"include_schemas": [self.database]},
        })
    }

    fn schema(&self) -> String {
        self.database.clone()
    }

    async fn create_tables(&self) {
        let client = self.client().await;
        let database = client.database(&self.database);
        for table in Table::ALL {
            database
                .create_collection(table.name())
                .await
                .unwrap_or_else(|e| panic!("create collection {}: {e}", table.name()));
        }
    }

    async fn connect(url: &str) -> Result<Self::Session, String> {
        let client = client(url).await.map_err(|e| e.to_string())?;
        let database = client
            .default_database()
            .ok_or_else(|| format!("{url} names no database"))?;
        Ok(Session {
            client,
            database,
            broken: false,
        })
    }

    fn is_open(session: &Self::Session) -> bool {
        !session.broken
    }

    async fn execute(session: &mut Self::Session, transaction: &Transaction) -> Result<(), String> {
        let result = run_transaction(&session.client, &session.database, transaction).await;
        if let Err(e) = &result {
            session.broken |= matches!(
                *e.kind,
                ErrorKind::Io(_)
                    | ErrorKind::ServerSelection { .. }
                    | ErrorKind::ConnectionPoolCleared { .. }
                    | ErrorKind::Shutdown
            );
        }
        result.map_err(|e| e.to_string())
    }

    async fn rows(&self, table: Table) -> Rows {
        self.rows_of(table.name()).await
    }

    async fn write_position(&self) -> String {
        let client = self.client().await;
        let mut session = client.start_session().await.expect("a session");
        client
            .database(&format!("{}{MARKS_SUFFIX}", self.database))
            .collection::<Document>("marks")
            .update_one(doc! { "_id": "mark" }, doc! { "$inc": { "n": 1 } })
            .upsert(true)
            .session(&mut session)
            .await
            .expect("the no-op write");
        let time = session
            .operation_time()
            .expect("the no-op write's cluster time");
        format!("{}.{}", time.time, time.increment)
    }

    async fn confirmed(
        &self,
        _connector: &str,
        state: Option<&ConnectorState>,
        position: &str,
    ) -> Result<(), String> {
        let target = position
            .split_once('.')
            .and_then(|(t, i)| Some((t.parse::<u32>().ok()?, i.parse::<u32>().ok()?)))
            .ok_or_else(|| format!("`{position}` is not a cluster time T.I"))?;
        let cursor = state
            .and_then(|s| s.cursor.as_ref())
            .map(|c| c.value.position.clone())
            .ok_or("no cursor yet")?;
        let committed =
            MongoPosition::parse(&SourcePosition(cursor.clone())).map_err(|e| e.to_string())?;
        // Every change made before the mark is at a cluster time before it; a position at
        // the mark's time or later holds them all (a snapshot: everything at or before its
        // time; an event or idle token: everything sorting before it).
        if committed.time >= target {
            Ok(())
        } else {
            Err(format!(
                "the cursor is at {cursor}, not yet at cluster time {position}"
            ))
        }
    }

    fn restart(&self) {
        panic!(
            "the MongoDB fixture cannot restart the server KYMA_TEST_MONGODB_URL names: it has no private server (`private` is None), so no test calls this"
        );
    }

    fn crash(&self) {
        panic!(
            "the MongoDB fixture cannot crash the server KYMA_TEST_MONGODB_URL names: it has no private server (`private` is None), so no test calls this"
        );
    }
}

impl Drop for MongoSource {
    /// Drops the database and its marks, unless the test failed (then they are kept).
    fn drop(&mut self) {
        let marks = format!("{}{MARKS_SUFFIX}", self.database);
        if std::thread::panicking() {
            eprintln!(
                "MongoDB databases {} and {marks} kept for a look at the failure",
                self.database
            );
            return;
        }
        let url = self.url.clone();
        let database = self.database.clone();
        // A runtime of its own on a thread of its own: the fixture may be dropped in or
        // out of one.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(async {
                    let client = client(&url).await.map_err(|e| e.to_string())?;
                    for name in [database.as_str(), marks.as_str()] {
                        client
                            .database(name)
                            .drop()
                            .await
                            .map_err(|e| format!("drop {name}: {e}"))?;
                    }
                    client.shutdown().await;
                    Ok::<_, String>(())
                })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("MongoDB database {} left behind: {e}", self.database),
            Err(_) => eprintln!(
                "MongoDB database {} left behind: dropping it panicked",
                self.database
            ),
        }
    }
}

/// Runs `transaction` in a session transaction on `database`: committed, or aborted when
/// it is to be rolled back or one of its operations fails.
async fn run_transaction(
    client: &Client,
    database: &Database,
    transaction: &Transaction,
) -> Result<(), DriverError> {
    let mut session = client.start_session().await?;
    session.start_transaction().await?;
    for op in &transaction.ops {
        if let Err(e) = run_op(database, &mut session, op).await {
            // The transaction is aborted; an abort that fails too changes nothing.
            let _ = session.abort_transaction().await;
            return Err(e);
        }
    }
    if transaction.rolled_back {
        session.abort_transaction().await
    } else {
        session.commit_transaction().await
    }
}

/// Runs one operation in `session`'s transaction.
async fn run_op(
    database: &Database,
    session: &mut ClientSession,
    op: &Op,
) -> Result<(), DriverError> {
    match op {
        Op::Insert { table, rows } => {
            let documents: Vec<Document> = rows.iter().map(|row| document(*table, row)).collect();
            if !documents.is_empty() {
                collection(database, *table)
                    .insert_many(documents)
                    .session(&mut *session)
                    .await?;
            }
        }
        Op::Update { table, rows, set } => {
            let collection = collection(database, *table);
            let (keys, others): (Vec<_>, Vec<_>) = set
                .iter()
                .partition(|(column, _)| table.key().contains(column));
            if keys.is_empty() {
                let filter = selection(&collection, session, *table, rows).await?;
                collection
                    .update_many(filter, vec![set_stage(*table, &others)])
                    .session(&mut *session)
                    .await?;
                return Ok(());
            }
            // `_id` cannot change: the other columns first, then delete and insert again.
            let ids = selected_ids(&collection, session, *table, rows).await?;
            if ids.is_empty() {
                return Ok(());
            }
            let filter = doc! { "_id": { "$in": ids } };
            if !others.is_empty() {
                collection
                    .update_many(filter.clone(), vec![set_stage(*table, &others)])
                    .session(&mut *session)
                    .await?;
            }
            let documents: Vec<Document> = collection
                .find(filter.clone())
                .session(&mut *session)
                .await?
                .stream(&mut *session)
                .try_collect()
                .await?;
            collection
                .delete_many(filter)
                .session(&mut *session)
                .await?;
            let moved: Vec<Document> = documents
                .into_iter()
                .map(|mut document| {
                    let id = document.get("_id").expect("an _id");
                    let new = new_id(*table, id, &keys);
                    document.insert("_id", new);
                    document
                })
                .collect();
            collection.insert_many(moved).session(&mut *session).await?;
        }
        Op::Delete { table, rows } => {
            let collection = collection(database, *table);
            let filter = selection(&collection, session, *table, rows).await?;
            collection
                .delete_many(filter)
                .session(&mut *session)
                .await?;
        }
    }
    Ok(())
}

/// The collection of `table`.
fn collection(database: &Database, table: Table) -> Collection<Document> {
    database.collection(table.name())
}

/// The suite column `column` of `table`.
fn column_kind(table: Table, column: &str) -> Kind {
    table
        .columns()
        .iter()
        .find(|c| c.name == column)
        .unwrap_or_else(|| panic!("{table:?} has no column {column}"))
        .kind
}

/// Where column `column` of `table` is in a document: a key column in `_id`.
fn path(table: Table, column: &str) -> String {
    match table.key() {
        [only] if *only == column => "_id".to_owned(),
        key if key.contains(&column) => format!("_id.{column}"),
        _ => column.to_owned(),
    }
}

/// `value` as the BSON of a `kind` column.
fn bson(kind: Kind, value: &Value) -> Bson {
    match (kind, value) {
        (_, Value::Null) => Bson::Null,
        (Kind::Int64, Value::Int(n)) => Bson::Int64(*n),
        (Kind::Int32, Value::Int(n)) => {
            Bson::Int32(i32::try_from(*n).expect("a value of an Int32 column"))
        }
        (Kind::Bool, Value::Bool(b)) => Bson::Boolean(*b),
        (Kind::Text { .. }, Value::Text(text)) => Bson::String(text.clone()),
        (Kind::Decimal, Value::Decimal(hundredths)) => Bson::Decimal128(decimal(*hundredths)),
        (Kind::Timestamp, Value::Timestamp(seconds)) => {
            Bson::DateTime(DateTime::from_millis(seconds * 1000))
        }
        (kind, value) => panic!("{value:?} is no value of a {kind:?} column"),
    }
}

/// A Decimal128 of `hundredths` / 100, with two places (`-1.50`).
fn decimal(hundredths: i64) -> Decimal128 {
    let sign = if hundredths < 0 { "-" } else { "" };
    let abs = hundredths.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
        .parse()
        .expect("a decimal")
}

/// The value of key column `column` (an integer) as BSON of its kind.
fn key_bson(table: Table, column: &str, value: i64) -> Bson {
    bson(column_kind(table, column), &Value::Int(value))
}

/// The document of a row of `table` (values in column order): `_id` from the key columns,
/// the other columns as fields.
pub fn document(table: Table, row: &[Value]) -> Document {
    let columns = table.columns();
    assert_eq!(row.len(), columns.len(), "a row of {table:?}: {row:?}");
    let key = table.key();
    let value_of = |name: &str| {
        let i = columns
            .iter()
            .position(|c| c.name == name)
            .expect("a key column");
        bson(columns[i].kind, &row[i])
    };
    let id = match key {
        [only] => value_of(only),
        _ => Bson::Document(key.iter().map(|k| ((*k).to_owned(), value_of(k))).collect()),
    };
    let mut document = doc! { "_id": id };
    for (column, value) in columns.iter().zip(row) {
        if !key.contains(&column.name) {
            document.insert(column.name, bson(column.kind, value));
        }
    }
    document
}

/// An integer of an `_id` (a whole `_id`, or a field of one).
fn integer(value: &Bson) -> i64 {
    match value {
        Bson::Int32(n) => i64::from(*n),
        Bson::Int64(n) => *n,
        other => panic!("a key value is an integer, not {other:?}"),
    }
}

/// The `_id` that `id` becomes under the key columns' `sets`.
fn new_id(table: Table, id: &Bson, sets: &[&(&'static str, Set)]) -> Bson {
    let key = table.key();
    let mut values: Vec<i64> = match (key, id) {
        ([_], id) => vec![integer(id)],
        (_, Bson::Document(fields)) => key
            .iter()
            .map(|k| integer(fields.get(*k).expect("a key field")))
            .collect(),
        (_, other) => panic!("{table:?}'s _id is a document, not {other:?}"),
    };
    for (column, set) in sets {
        let i = key.iter().position(|k| k == column).expect("a key column");
        values[i] = match set {
            Set::To(Value::Int(n)) => *n,
            Set::Add(n) => values[i] + n,
            other => panic!("key column {column} cannot be set with {other:?}"),
        };
    }
    match key {
        [only] => key_bson(table, only, values[0]),
        _ => Bson::Document(
            key.iter()
                .zip(values)
                .map(|(k, v)| ((*k).to_owned(), key_bson(table, k, v)))
                .collect(),
        ),
    }
}

/// The `$set` stage of a pipeline update setting non-key columns: every expression reads
/// the document before the stage, as SQL's `SET` reads the row before the update.
fn set_stage(table: Table, sets: &[&(&'static str, Set)]) -> Document {
    let mut fields = Document::new();
    for (column, set) in sets {
        let kind = column_kind(table, column);
        let field = format!("${column}");
        let expression = match set {
            Set::To(value) => doc! { "$literal": bson(kind, value) },
            // `$add` of null is null: NULL stays NULL.
            Set::Add(n) => {
                let units = match kind {
                    Kind::Int64 => Bson::Int64(*n),
                    Kind::Int32 => Bson::Int32(i32::try_from(*n).expect("an Int32 increment")),
                    Kind::Decimal => Bson::Decimal128(decimal(n * 100)),
                    // A date plus milliseconds.
                    Kind::Timestamp => Bson::Int64(n * 1000),
                    other => panic!("a {other:?} column cannot be added to"),
                };
                doc! { "$add": [field, units] }
            }
            Set::Flip => doc! { "$not": [{ "$ifNull": [field, false] }] },
        };
        fields.insert(*column, expression);
    }
    doc! { "$set": fields }
}

/// The filter selecting `rows` of `table` (for `Select::First`, the `_id`s it selects).
async fn selection(
    collection: &Collection<Document>,
    session: &mut ClientSession,
    table: Table,
    rows: &Select,
) -> Result<Document, DriverError> {
    Ok(match rows {
        Select::Key(values) => {
            assert_eq!(values.len(), table.key().len(), "a key of {table:?}");
            table
                .key()
                .iter()
                .zip(values)
                .map(|(column, value)| (path(table, column), key_bson(table, column, *value)))
                .collect()
        }
        Select::In(column, values) => {
            let kind = column_kind(table, column);
            let values: Vec<Bson> = values.iter().map(|v| bson(kind, &Value::Int(*v))).collect();
            doc! { path(table, column): { "$in": values } }
        }
        Select::Modulo(column, modulus, rest) => {
            doc! { path(table, column): { "$mod": [*modulus, *rest] } }
        }
        Select::First { .. } => {
            let ids = selected_ids(collection, session, table, rows).await?;
            doc! { "_id": { "$in": ids } }
        }
    })
}

/// The `_id`s of the documents `rows` selects, in key order.
async fn selected_ids(
    collection: &Collection<Document>,
    session: &mut ClientSession,
    table: Table,
    rows: &Select,
) -> Result<Vec<Bson>, DriverError> {
    let (filter, limit) = match rows {
        Select::First {
            column,
            value,
            limit,
        } => (
            doc! { path(table, column): bson(column_kind(table, column), &Value::Int(*value)) },
            Some(i64::from(*limit)),
        ),
        other => (
            Box::pin(selection(collection, session, table, other)).await?,
            None,
        ),
    };
    let mut find = collection
        .find(filter)
        .sort(doc! { "_id": 1 })
        .projection(doc! { "_id": 1 });
    if let Some(limit) = limit {
        find = find.limit(limit);
    }
    let documents: Vec<Document> = find
        .session(&mut *session)
        .await?
        .stream(&mut *session)
        .try_collect()
        .await?;
    Ok(documents
        .into_iter()
        .filter_map(|mut d| d.remove("_id"))
        .collect())
}
