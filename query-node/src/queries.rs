//! `kyma.system.queries`: the recent statements this node ran, with their duration, rows,
//! bytes read from federated sources and `pushdown_summary`.
//!
//! The log is per node and in memory (the last [`QueryLog::CAPACITY`] statements): a query
//! node is stateless, and a load balancer spreads a client's statements over replicas.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use arrow::array::{
    ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::common::Result;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;

use crate::federation::summary::SourceSummary;

/// The schema that holds system tables.
pub const SYSTEM_SCHEMA: &str = "system";
/// The system table of recent queries.
pub const QUERIES_TABLE: &str = "queries";

/// One statement as the log keeps it.
#[derive(Debug, Clone)]
pub struct QueryRecord {
    /// The id handed to the client in the FlightInfo's app_metadata.
    pub query_id: String,
    /// The statement.
    pub sql: String,
    /// When it started, Unix microseconds.
    pub started_at_us: i64,
    /// How long it ran, milliseconds (to the last row sent).
    pub duration_ms: f64,
    /// Rows returned (queries) or affected (commands).
    pub rows: u64,
    /// Bytes received from federated sources.
    pub source_bytes: u64,
    /// What each federated source ran.
    pub pushdown: Vec<SourceSummary>,
    /// The error it ended with, if any.
    pub error: Option<String>,
}

/// The recent statements of this node.
#[derive(Debug, Default)]
pub struct QueryLog {
    records: Mutex<VecDeque<QueryRecord>>,
}

impl QueryLog {
    /// How many statements the log keeps.
    pub const CAPACITY: usize = 1000;

    /// Adds a finished statement, dropping the oldest beyond capacity.
    pub fn record(&self, record: QueryRecord) {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if records.len() >= Self::CAPACITY {
            records.pop_front();
        }
        records.push_back(record);
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("query_id", DataType::Utf8, false),
            Field::new("sql", DataType::Utf8, false),
            Field::new(
                "started_at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("duration_ms", DataType::Float64, false),
            Field::new("rows", DataType::UInt64, false),
            Field::new("source_bytes", DataType::UInt64, false),
            Field::new("pushdown_summary", DataType::Utf8, false),
            Field::new("error", DataType::Utf8, true),
        ]))
    }

    fn snapshot(&self) -> Result<RecordBatch> {
        let records: Vec<QueryRecord> = self
            .records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        let strings = |f: &dyn Fn(&QueryRecord) -> String| -> ArrayRef {
            Arc::new(records.iter().map(|r| Some(f(r))).collect::<StringArray>())
        };
        let columns: Vec<ArrayRef> = vec![
            strings(&|r| r.query_id.clone()),
            strings(&|r| r.sql.clone()),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    records.iter().map(|r| r.started_at_us),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(Float64Array::from_iter_values(
                records.iter().map(|r| r.duration_ms),
            )),
            Arc::new(UInt64Array::from_iter_values(
                records.iter().map(|r| r.rows),
            )),
            Arc::new(UInt64Array::from_iter_values(
                records.iter().map(|r| r.source_bytes),
            )),
            strings(&|r| summary_json(&r.pushdown)),
            Arc::new(
                records
                    .iter()
                    .map(|r| r.error.clone())
                    .collect::<StringArray>(),
            ),
        ];
        Ok(RecordBatch::try_new(Self::schema(), columns)?)
    }
}

/// The `pushdown_summary` JSON of a statement.
pub fn summary_json(summaries: &[SourceSummary]) -> String {
    serde_json::to_string(summaries).unwrap_or_else(|_| "[]".into())
}

/// The `kyma.system` schema.
#[derive(Debug)]
pub struct SystemSchema {
    log: Arc<QueryLog>,
}

impl SystemSchema {
    /// The schema over `log`.
    pub fn new(log: Arc<QueryLog>) -> Self {
        Self { log }
    }
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        vec![QUERIES_TABLE.to_owned()]
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok((name == QUERIES_TABLE).then(|| {
            Arc::new(QueriesTable {
                log: self.log.clone(),
            }) as Arc<dyn TableProvider>
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        name == QUERIES_TABLE
    }
}

/// `kyma.system.queries`: a snapshot of the log taken when the query scans it.
#[derive(Debug)]
struct QueriesTable {
    log: Arc<QueryLog>,
}

#[async_trait]
impl TableProvider for QueriesTable {
    fn schema(&self) -> SchemaRef {
        QueryLog::schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batch = self.log.snapshot()?;
        MemTable::try_new(batch.schema(), vec![vec![batch]])?
            .scan(state, projection, filters, limit)
            .await
    }
}
