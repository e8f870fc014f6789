//! What the sync suites need from a source, in neutral terms: the suite's two tables, abstract
//! operations on them, and [`SourceFixture`], which a source implements to run every
//! end-to-end and fault test (`sync_suite.rs`, `sync_faults.rs`) by adding one fixture.
//!
//! # The suite's tables
//!
//! [`Table::Accounts`] has a single-column key, [`Table::Items`] a composite one; their
//! columns ([`Table::columns`]) use only kinds every source has (integers, text, a boolean,
//! a two-place decimal, a timestamp in whole seconds), so the same workload runs everywhere.
//! Seeded rows are a function of their index ([`Table::seed_row`]).
//!
//! # Operations
//!
//! A [`Transaction`] is a list of [`Op`]s the fixture runs as ONE source transaction
//! ([`Transaction::commit`]) or makes and rolls back ([`Transaction::rollback`]). Three
//! operations — insert rows, update columns of selected rows, delete selected rows — express
//! every change the suites make:
//!
//! | change | as operations |
//! |---|---|
//! | insert rows | `Insert` |
//! | update non-key columns, to NULL too | `Update` with `Set::To(Value::Null)`, `Set::Add`, `Set::Flip` |
//! | delete | `Delete` |
//! | change a single-column key | `Update` of `Accounts` setting `id` |
//! | change a composite key | `Update` of `Items` setting `owner` or `n` (one row: `Select::First`) |
//! | several changes of one row in one transaction | several `Update`s of one `Select::Key` |
//! | insert then delete in one transaction | `Insert`, then `Delete` of its key |
//! | a wider update | `Update` of `Select::Modulo` (many rows) |
//! | a transaction over both tables | operations on `Accounts` and `Items` |
//!
//! An [`Op::Update`] that sets a key column changes the row's key: Postgres and MariaDB see
//! an update; a source whose keys cannot change (MongoDB `_id`) renders it as a delete of the
//! old document and an insert of the new one in the same transaction, which kyma must show
//! the same way (the old key gone, the new one present).
//!
//! # Adding a source
//!
//! Implement [`SourceFixture`] in a module beside [`postgres`] and add one `@source` line to
//! [`for_every_source!`]; every generic suite then runs against it, unchanged.
//!
//! - **MariaDB** (`kyma_test_harness::MariaDb`): `shared` creates a database on
//!   `MariaDb::shared()` (`create_database`), `private` starts its own `MariaDb::start()`;
//!   the schema is the database name; `restart` is `process().restart()` then `wait_ready()`,
//!   `crash` is `process().kill()`, `process().start_again()`, `wait_ready()`. Operations
//!   render as MySQL SQL in `START TRANSACTION; …; COMMIT` (or `ROLLBACK`), on a session with
//!   `time_zone = '+00:00'` (timestamps as `FROM_UNIXTIME(s)`); `Select::First` becomes
//!   `… WHERE column = v ORDER BY key LIMIT n`, since a single-table UPDATE or DELETE takes
//!   them and MySQL refuses `LIMIT` in an `IN` subquery. `write_position` is
//!   `@@gtid_binlog_pos`; `confirmed` holds once the committed cursor's position
//!   (`state.cursor.value.position`, a GTID set) contains it. Rows are read back through the
//!   connector's own snapshot reader, as the Postgres fixture does, so that values display
//!   as kyma types them.
//! - **MongoDB** ([`mongodb`]): a real server only when `KYMA_TEST_MONGODB_URL` names a replica set
//!   (`kyma_test_harness::mongodb_url_or_skip`): otherwise `shared` and `private` print a
//!   `SKIP` line and return `None`, and each test returns without running. `private` also
//!   returns `None` (with a `SKIP` line) while the harness does not run the server itself,
//!   since a server it does not run cannot be restarted or crashed. Tables are collections in
//!   a fresh database (the schema); a key is `_id` (for `Items` a document `{owner, n}`); a
//!   transaction runs in a session transaction, `Set::Add` and `Set::Flip` as pipeline
//!   updates (`$add`, `$not` of `$ifNull`) so that NULL stays NULL, a key change as delete
//!   plus insert. `write_position` is the cluster time of a no-op write; `confirmed`
//!   compares it with the cluster time in the committed cursor's resume token.

pub mod mariadb;
pub mod mongodb;
pub mod postgres;
pub mod sql;

use std::time::{Duration, Instant};

use kyma_catalog::{ConnectorSpec, ConnectorState};

use super::Kyma;
use super::sync::{Deployment, Rows};

/// Owners of the seeded items (item `i` belongs to owner `i % OWNERS + 1`).
pub const OWNERS: i64 = 500;

/// 2024-01-01T00:00:00Z in seconds since the Unix epoch: seeded timestamps count from it.
pub const EPOCH_2024: i64 = 1_704_067_200;

/// A table of the suites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// `id` (the key), `balance`, `name`, `touched`, `active`.
    Accounts,
    /// `owner`, `n` (the key, in that order), `qty`, `price`, `note`, `at`.
    Items,
}

/// What a column holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A 64-bit integer.
    Int64,
    /// A 32-bit integer.
    Int32,
    /// A boolean.
    Bool,
    /// Text, at most `max` characters when given.
    Text { max: Option<u32> },
    /// A decimal of 12 digits, 2 after the point.
    Decimal,
    /// A timestamp with a time zone (values are whole seconds, UTC).
    Timestamp,
}

/// A column of a suite table.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    /// Its name.
    pub name: &'static str,
    /// What it holds.
    pub kind: Kind,
    /// Whether it may hold NULL.
    pub nullable: bool,
}

const fn column(name: &'static str, kind: Kind, nullable: bool) -> Column {
    Column {
        name,
        kind,
        nullable,
    }
}

const ACCOUNTS: &[Column] = &[
    column("id", Kind::Int64, false),
    column("balance", Kind::Int64, false),
    column("name", Kind::Text { max: None }, true),
    column("touched", Kind::Int32, false),
    column("active", Kind::Bool, true),
];

const ITEMS: &[Column] = &[
    column("owner", Kind::Int64, false),
    column("n", Kind::Int32, false),
    column("qty", Kind::Int32, false),
    column("price", Kind::Decimal, true),
    column("note", Kind::Text { max: Some(40) }, true),
    column("at", Kind::Timestamp, true),
];

impl Table {
    /// Both tables.
    pub const ALL: [Table; 2] = [Table::Accounts, Table::Items];

    /// Its name at the source and in kyma.
    pub fn name(self) -> &'static str {
        match self {
            Table::Accounts => "accounts",
            Table::Items => "items",
        }
    }

    /// Its columns, in order (an inserted row gives a value for each).
    pub fn columns(self) -> &'static [Column] {
        match self {
            Table::Accounts => ACCOUNTS,
            Table::Items => ITEMS,
        }
    }

    /// Its key columns, in key order.
    pub fn key(self) -> &'static [&'static str] {
        match self {
            Table::Accounts => &["id"],
            Table::Items => &["owner", "n"],
        }
    }

    /// The `i`-th seeded row (from 1): account `i` with balance 1000, every third active;
    /// item `i` of owner `i % OWNERS + 1`.
    pub fn seed_row(self, i: i64) -> Vec<Value> {
        match self {
            Table::Accounts => vec![
                Value::Int(i),
                Value::Int(1000),
                Value::text(format!("account {i}")),
                Value::Int(0),
                Value::Bool(i % 3 == 0),
            ],
            Table::Items => vec![
                Value::Int(i % OWNERS + 1),
                Value::Int(i),
                Value::Int(i % 7),
                Value::Decimal(i * 25),
                Value::text(format!("item {i}")),
                Value::Timestamp(EPOCH_2024 + i),
            ],
        }
    }
}

/// A value written to a column.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// NULL.
    Null,
    /// An integer (of an integer column).
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// Text.
    Text(String),
    /// A decimal in hundredths: `Decimal(-150)` is -1.50.
    Decimal(i64),
    /// A timestamp in whole seconds since the Unix epoch (every source keeps them exactly).
    Timestamp(i64),
}

impl Value {
    /// A text value.
    pub fn text(text: impl Into<String>) -> Self {
        Value::Text(text.into())
    }
}

/// What an update sets a column to.
#[derive(Clone, Debug, PartialEq)]
pub enum Set {
    /// This value.
    To(Value),
    /// The column's value plus this many units (NULL stays NULL).
    Add(i64),
    /// The negation of the column's value, NULL counting as false.
    Flip,
}

/// The rows an update or delete touches.
#[derive(Clone, Debug, PartialEq)]
pub enum Select {
    /// The row with this key (values in key order); none if there is no such row.
    Key(Vec<i64>),
    /// The rows whose `column` is one of the values.
    In(&'static str, Vec<i64>),
    /// The rows whose `column` modulo `.1` is `.2`.
    Modulo(&'static str, i64, i64),
    /// The first `limit` rows, in key order, whose `column` is `value`.
    First {
        /// The column compared.
        column: &'static str,
        /// The value it must have.
        value: i64,
        /// How many rows at most.
        limit: u32,
    },
}

/// One change within a transaction.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Inserts rows (each a value per column, in [`Table::columns`] order).
    Insert { table: Table, rows: Vec<Vec<Value>> },
    /// Sets columns of the selected rows; a key column set changes the row's key.
    Update {
        table: Table,
        rows: Select,
        set: Vec<(&'static str, Set)>,
    },
    /// Deletes the selected rows.
    Delete { table: Table, rows: Select },
}

/// Changes the source makes in one transaction.
#[derive(Clone, Debug, PartialEq)]
pub struct Transaction {
    /// The changes, in order.
    pub ops: Vec<Op>,
    /// Rolled back instead of committed: nothing of it may ever show in kyma.
    pub rolled_back: bool,
}

impl Transaction {
    /// A transaction that commits `ops`.
    pub fn commit(ops: Vec<Op>) -> Self {
        Self {
            ops,
            rolled_back: false,
        }
    }

    /// A transaction that makes `ops` and rolls them back.
    pub fn rollback(ops: Vec<Op>) -> Self {
        Self {
            ops,
            rolled_back: true,
        }
    }
}

/// A source the sync suites run against: a fresh database (or the like) of its own on a real
/// server, the suite's tables in it, and the source-specific knowledge the tests need.
///
/// Futures need not be `Send`: tests block on them, and the fault workload runs sessions on
/// a thread of its own (which is why [`SourceFixture::connect`] takes a URL, not `self`).
#[allow(async_fn_in_trait)]
pub trait SourceFixture: Sized {
    /// The source's name: the module of its tests (`postgres::…`) and a word in messages.
    const NAME: &'static str;

    /// A connection that runs transactions.
    type Session;

    /// A fresh database named after `name` on the server shared by the binary's tests, or
    /// `None` (after printing a `SKIP` line) when no such server is available here.
    fn shared(name: &str) -> Option<Self>;

    /// As [`SourceFixture::shared`], on a server of its own, which the test may restart and
    /// crash ([`SourceFixture::restart`], [`SourceFixture::crash`]).
    fn private(name: &str) -> Option<Self>;

    /// The URL of the database (for sessions, and in the connector).
    fn url(&self) -> String;

    /// The body that registers sync connector `name` over the database (type, connection,
    /// mode `sync`), as `POST /v1/connectors` takes it.
    fn connector(&self, name: &str) -> serde_json::Value;

    /// The schema of the suite's tables, as kyma names it (`public` for Postgres).
    fn schema(&self) -> String;

    /// Creates the suite's tables, empty.
    async fn create_tables(&self);

    /// Opens a session on the database at `url`.
    async fn connect(url: &str) -> Result<Self::Session, String>;

    /// Whether `session` can still run transactions (the server did not go away).
    fn is_open(session: &Self::Session) -> bool;

    /// Runs `transaction` on `session` as one source transaction: all of it or none.
    async fn execute(session: &mut Self::Session, transaction: &Transaction) -> Result<(), String>;

    /// The table's current rows read from the source, independently of kyma, keyed by
    /// `_kyma_pk`, each value displayed as kyma displays it.
    async fn rows(&self, table: Table) -> Rows;

    /// Where the source's change log ends now: every change made so far is before it.
    async fn write_position(&self) -> String;

    /// Whether connector `connector` (its catalog state `state`, if it has one) has
    /// confirmed everything before `position`; if not, what is missing. Together with a
    /// committed cursor this means every change before `position` is committed in kyma.
    async fn confirmed(
        &self,
        connector: &str,
        state: Option<&ConnectorState>,
        position: &str,
    ) -> Result<(), String>;

    /// Stops the server cleanly (its clients are disconnected), starts it again on the same
    /// data and waits until it accepts connections (a [`SourceFixture::private`] source).
    fn restart(&self);

    /// Crashes the server (SIGKILL), starts it again on the same data (crash recovery) and
    /// waits until it accepts connections (a [`SourceFixture::private`] source).
    fn crash(&self);

    /// Runs `transactions` one after another on a new session; fails the test on an error.
    async fn run(&self, transactions: &[Transaction]) {
        let mut session = Self::connect(&self.url())
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", Self::NAME));
        for transaction in transactions {
            Self::execute(&mut session, transaction)
                .await
                .unwrap_or_else(|e| panic!("{} transaction: {e}", Self::NAME));
        }
    }

    /// Creates the suite's tables with `accounts` accounts and `items` items
    /// ([`Table::seed_row`]), inserted in transactions of up to a thousand rows.
    async fn create_and_seed(&self, accounts: i64, items: i64) {
        const CHUNK: i64 = 1000;
        self.create_tables().await;
        let mut seeds = Vec::new();
        for (table, count) in [(Table::Accounts, accounts), (Table::Items, items)] {
            for start in (1..=count).step_by(CHUNK as usize) {
                let rows = (start..=count.min(start + CHUNK - 1))
                    .map(|i| table.seed_row(i))
                    .collect();
                seeds.push(Transaction::commit(vec![Op::Insert { table, rows }]));
            }
        }
        self.run(&seeds).await;
    }
}

impl Deployment<'_> {
    /// Registers sync connector `name` over `source`.
    pub async fn register_source(&self, source: &impl SourceFixture, name: &str) -> ConnectorSpec {
        self.create_connector(source.connector(name)).await
    }

    /// Waits until connector `connector` has committed in kyma every change `source` made
    /// before this call: the source confirms its write position and a cursor is committed.
    pub async fn wait_caught_up_with<F: SourceFixture>(
        &self,
        source: &F,
        connector: &str,
        worker: &Kyma,
    ) {
        let target = source.write_position().await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let state = self.catalog.connector(connector).await.ok();
            let confirmed = source.confirmed(connector, state.as_ref(), &target).await;
            // A new connector starts at its snapshot's position: only once every table's copy
            // is committed does a confirmed position mean the rows are in kyma.
            let committed = state.as_ref().is_some_and(|c| c.cursor.is_some());
            if confirmed.is_ok() && committed && self.all_copied(connector).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the worker did not catch up to {} position {target} ({confirmed:?}, cursor committed: {committed}); status: {:?}\n{}",
                F::NAME,
                state.map(|c| c.status),
                worker.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asserts that kyma's copy of every suite table equals `source`'s, row by row, and
    /// that no source change was applied twice.
    pub async fn assert_tables_synced(&self, source: &impl SourceFixture, connector: &str) {
        for table in Table::ALL {
            let rows = source.rows(table).await;
            self.assert_rows(connector, &source.schema(), table.name(), &rows)
                .await;
        }
    }

    /// Creates and seeds the suite's tables ([`SourceFixture::create_and_seed`]), starts
    /// worker `w-1`, registers `connector` and waits until it has caught up with the source;
    /// returns the worker.
    pub async fn start_synced(
        &self,
        source: &impl SourceFixture,
        connector: &str,
        accounts: i64,
        items: i64,
    ) -> Kyma {
        source.create_and_seed(accounts, items).await;
        let worker = self.worker("w-1");
        self.register_source(source, connector).await;
        self.wait_caught_up_with(source, connector, &worker).await;
        worker
    }
}

/// Runs `test` on a runtime, on a fresh database of `F`'s shared server and a fresh
/// deployment on the shared etcd, both named after `name`; returns at once if `F` has no
/// server here (the fixture printed a `SKIP` line).
pub fn on_shared_source<F: SourceFixture>(
    name: &str,
    test: impl AsyncFnOnce(&F, &Deployment<'static>),
) {
    let Some(source) = F::shared(name) else {
        return;
    };
    super::runtime().block_on(async {
        let kyma = Deployment::new(name).await;
        test(&source, &kyma).await;
    });
}

/// Instantiates generic test bodies once per source. Called in a test file as
/// `for_every_source!(case_a, case_b);` beside a module `cases` holding
/// `pub fn case_a<F: SourceFixture + 'static>()`; it makes, per source, a module named after
/// it (`postgres`) with one `#[test] fn case_a()` calling `cases::case_a::<Fixture>()`.
/// Adding a source to every suite is one `@source` line here.
#[allow(unused_macros)] // by the test binaries without generic suites
macro_rules! for_every_source {
    ($($case:ident),* $(,)?) => {
        $crate::common::source::for_every_source!(@source postgres,
            $crate::common::source::postgres::PostgresSource<'static>; $($case),*);
        $crate::common::source::for_every_source!(@source mariadb,
            $crate::common::source::mariadb::MariaDbSource; $($case),*);
        $crate::common::source::for_every_source!(@source mongodb,
            $crate::common::source::mongodb::MongoSource; $($case),*);
    };
    (@source $source:ident, $fixture:ty; $($case:ident),*) => {
        mod $source {
            $(
                #[test]
                fn $case() {
                    super::cases::$case::<$fixture>();
                }
            )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use for_every_source;
