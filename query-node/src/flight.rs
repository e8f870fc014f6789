//! Arrow Flight SQL on the query engine (arrow-flight's `FlightSqlService`).
//!
//! Supported: statement queries and updates, prepared statements with bound parameters,
//! bulk ingest (`CommandStatementIngest`: create, append, replace), and the metadata
//! commands clients call on connect (GetSqlInfo, GetCatalogs, GetDbSchemas, GetTables with
//! schemas, GetTableTypes, GetPrimaryKeys). Everything else answers UNIMPLEMENTED.
//!
//! # Statelessness
//!
//! Tickets and prepared-statement handles carry the statement itself (JSON: the SQL and the
//! bound parameters as Arrow IPC), so any replica behind a load balancer can serve any call.
//! Binding parameters returns a new handle holding them (`DoPutPreparedStatementResult`).
//! A command sent as a query (DDL or INSERT through `GetFlightInfo`) runs at
//! `GetFlightInfo`; its ticket carries the count.
//!
//! # Read-your-writes
//!
//! Statement calls (`GetFlightInfo`, `DoGet`, `DoPut` updates) carrying the headers of
//! [`crate::fence`] wait until this node's view of the named sync connectors has reached
//! the given source positions. Every call checks again, so a `DoGet` served by another
//! replica than its `GetFlightInfo` waits there too.
//!
//! # Errors
//!
//! Failures reach the client as gRPC statuses: bad SQL, type mismatches and bad arguments
//! are INVALID_ARGUMENT, unknown tables NOT_FOUND, an existing table ALREADY_EXISTS, a
//! transient catalog or storage failure UNAVAILABLE, a federated source that cannot be
//! reached UNAVAILABLE and one that refuses the query FAILED_PRECONDITION. A panic never ends
//! a connection.

use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandPreparedStatementQuery, CommandPreparedStatementUpdate, CommandStatementIngest,
    CommandStatementQuery, CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt,
    SqlInfo, TableExistsOption, TableNotExistOption, TicketStatementQuery,
};
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage,
    SchemaAsIpc, Ticket,
};
use datafusion::common::{DataFusionError, ScalarValue, SchemaError};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::ExecutionPlan;
use futures::{Stream, StreamExt, TryStreamExt};
use kyma_catalog::CatalogError;
use kyma_table::TableError;
use prost::Message;
use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::engine::{IngestMode, Outcome, QueryEngine, QueryRows};
use crate::federation::scan::source_bytes;
use crate::federation::source::SourceError;
use crate::fence::PositionFence;
use crate::metrics::QueryMetrics;
use crate::provider::{DEFAULT_SCHEMA, KYMA_CATALOG, count_batch};
use crate::queries::{QueryLog, QueryRecord};
use crate::wire;

type DoGetStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send>>;

/// What a ticket or prepared-statement handle carries.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Handle {
    /// The statement.
    sql: String,
    /// Bound parameters: an Arrow IPC stream of one row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    params: Option<Vec<u8>>,
    /// For a command already run at GetFlightInfo: its count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    done: Option<u64>,
    /// The id GetFlightInfo announced (app_metadata) and `kyma.system.queries` records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    query_id: Option<String>,
}

impl Handle {
    fn encode(&self) -> bytes::Bytes {
        serde_json::to_vec(self).unwrap_or_default().into()
    }

    fn decode(bytes: &[u8]) -> Result<Self, Status> {
        serde_json::from_slice(bytes).map_err(|_| {
            Status::invalid_argument("the ticket or statement handle was not issued by kyma")
        })
    }

    fn parameters(&self) -> Result<Vec<ScalarValue>, Status> {
        let Some(ipc) = &self.params else {
            return Ok(Vec::new());
        };
        let batches = decode_ipc(ipc)?;
        first_row(&batches)
    }
}

/// The Flight SQL service of a query node.
#[derive(Clone)]
pub struct KymaFlightSqlService {
    engine: QueryEngine,
    metrics: Arc<QueryMetrics>,
    token: Option<Arc<str>>,
}

impl KymaFlightSqlService {
    /// A service over `engine`; `token` (when set) is what a basic-auth handshake must
    /// present as its password, and what it hands back as the bearer token.
    pub fn new(engine: QueryEngine, metrics: Arc<QueryMetrics>, token: Option<Arc<str>>) -> Self {
        Self {
            engine,
            metrics,
            token,
        }
    }

    /// Waits for the source positions the call's headers name, if any ([`PositionFence`]).
    async fn fence(&self, metadata: &MetadataMap) -> Result<(), Status> {
        match PositionFence::from_headers(metadata)? {
            Some(fence) => fence.wait(self.engine.view()).await,
            None => Ok(()),
        }
    }

    /// Runs a statement; the tracker records it in `kyma.system.queries` when dropped (for
    /// rows: when the stream it travels with ends).
    async fn run(
        &self,
        sql: &str,
        params: Vec<ScalarValue>,
        query_id: Option<String>,
    ) -> Result<(Outcome, QueryTracker), Status> {
        let started = Instant::now();
        let mut tracker = QueryTracker::new(
            self.engine.queries().clone(),
            self.metrics.clone(),
            query_id,
            sql,
        );
        let result = self.engine.execute(sql, params).await;
        self.metrics.statement(started.elapsed(), result.is_ok());
        match result {
            // DDL counts 0; INSERT and CREATE TABLE … AS count the rows they wrote.
            Ok(Outcome::Count(n)) => {
                self.metrics.rows_ingested(n);
                tracker.record.rows = n;
                tracker.finished = true;
                Ok((Outcome::Count(n), tracker))
            }
            Ok(Outcome::Rows(rows)) => {
                tracker.record.pushdown = rows.pushdown.clone();
                tracker.plan = Some(rows.plan.clone());
                Ok((Outcome::Rows(rows), tracker))
            }
            Err(e) => {
                tracker.fail(e.to_string());
                Err(status_of(&e))
            }
        }
    }

    fn stream_rows(&self, rows: QueryRows, tracker: QueryTracker) -> DoGetStream {
        let metrics = self.metrics.clone();
        let schema = wire::client_schema(&rows.schema);
        let client_schema = schema.clone();
        let batches = TrackedStream {
            inner: rows.stream,
            tracker,
        }
        .inspect_ok(move |b| metrics.rows_returned(b.num_rows() as u64))
        .map_err(|e| FlightError::Tonic(Box::new(status_of(&e))))
        .and_then(move |batch| {
            futures::future::ready(
                wire::client_batch(batch, &client_schema).map_err(FlightError::Arrow),
            )
        });
        Box::pin(
            FlightDataEncoderBuilder::new()
                .with_schema(schema)
                .build(batches)
                .map_err(Status::from),
        )
    }

    async fn outcome_stream(&self, handle: &Handle) -> Result<DoGetStream, Status> {
        if let Some(count) = handle.done {
            return Ok(batch_stream(count_batch(count).map_err(|e| status_of(&e))?));
        }
        let params = handle.parameters()?;
        match self
            .run(&handle.sql, params, handle.query_id.clone())
            .await?
        {
            (Outcome::Rows(rows), tracker) => Ok(self.stream_rows(rows, tracker)),
            (Outcome::Count(count), _) => {
                Ok(batch_stream(count_batch(count).map_err(|e| status_of(&e))?))
            }
        }
    }

    /// Runs an update; a statement that returns rows is drained. The count, or -1 for rows.
    async fn run_update(&self, sql: &str, params: Vec<ScalarValue>) -> Result<i64, Status> {
        match self.run(sql, params, None).await? {
            (Outcome::Count(n), _) => Ok(i64::try_from(n).unwrap_or(i64::MAX)),
            (Outcome::Rows(rows), tracker) => {
                let mut stream = TrackedStream {
                    inner: rows.stream,
                    tracker,
                };
                while let Some(batch) = stream.next().await {
                    batch.map_err(|e| status_of(&e))?;
                }
                Ok(-1)
            }
        }
    }

    /// The FlightInfo of a statement (plain or prepared). A query is only planned here; a
    /// command (DDL, INSERT) runs now, and its ticket carries the count.
    async fn statement_info(
        &self,
        mut handle: Handle,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let started = Instant::now();
        let described = match self.engine.describe(&handle.sql).await {
            Ok(described) => described,
            Err(e) => return Err(self.refused(&handle.sql, started, &e)),
        };
        let query_id = uuid::Uuid::now_v7().to_string();
        handle.query_id = Some(query_id.clone());
        if !described.is_query {
            let params = handle.parameters()?;
            if let (Outcome::Count(n), _) = self
                .run(&handle.sql, params, Some(query_id.clone()))
                .await?
            {
                handle.done = Some(n);
            }
        }
        let ticket = TicketStatementQuery {
            statement_handle: handle.encode(),
        };
        let metadata = serde_json::json!({
            "query_id": query_id,
            "pushdown_summary": described.pushdown,
        });
        let info = flight_info(
            &wire::client_schema(&described.schema),
            ticket.as_any().encode_to_vec(),
            descriptor,
        )?
        .into_inner()
        .with_app_metadata(serde_json::to_vec(&metadata).unwrap_or_default());
        Ok(Response::new(info))
    }

    /// A statement that failed before it ran (while planned for its FlightInfo): counted
    /// as a failed statement and recorded in `kyma.system.queries` with its error.
    fn refused(&self, sql: &str, started: Instant, error: &DataFusionError) -> Status {
        self.metrics.statement(started.elapsed(), false);
        let mut tracker = QueryTracker::new(
            self.engine.queries().clone(),
            self.metrics.clone(),
            None,
            sql,
        );
        tracker.started = started;
        tracker.fail(error.to_string());
        status_of(error)
    }

    async fn catalog_entries(&self) -> Vec<(String, String, String, &'static str, SchemaRef)> {
        let ctx = self.engine.session();
        let mut out = Vec::new();
        for catalog_name in ctx.catalog_names() {
            let Some(catalog) = ctx.catalog(&catalog_name) else {
                continue;
            };
            for schema_name in catalog.schema_names() {
                let Some(schema) = catalog.schema(&schema_name) else {
                    continue;
                };
                let kind = if schema_name == "information_schema" {
                    "VIEW"
                } else {
                    "TABLE"
                };
                for table_name in schema.table_names() {
                    if let Ok(Some(table)) = schema.table(&table_name).await {
                        out.push((
                            catalog_name.clone(),
                            schema_name.clone(),
                            table_name,
                            kind,
                            table.schema(),
                        ));
                    }
                }
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
        out
    }
}

fn batch_stream(batch: RecordBatch) -> DoGetStream {
    Box::pin(
        FlightDataEncoderBuilder::new()
            .with_schema(batch.schema())
            .build(futures::stream::once(async { Ok(batch) }))
            .map_err(Status::from),
    )
}

fn flight_info(
    schema: &Schema,
    ticket: Vec<u8>,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(format!("cannot encode the result schema: {e}")))?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

/// The FlightInfo of a metadata command: its result schema, and a ticket that is the command.
fn command_info(
    command: &impl ProstMessageExt,
    schema: &Schema,
    request: Request<FlightDescriptor>,
) -> Result<Response<FlightInfo>, Status> {
    flight_info(
        schema,
        command.as_any().encode_to_vec(),
        request.into_inner(),
    )
}

fn schema_ipc(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
    Ok(bytes)
}

fn encode_ipc(batches: &[RecordBatch], schema: &SchemaRef) -> Result<Vec<u8>, Status> {
    let mut out = Vec::new();
    let mut writer = StreamWriter::try_new(&mut out, schema)
        .map_err(|e| Status::invalid_argument(format!("bad parameters: {e}")))?;
    for batch in batches {
        writer
            .write(batch)
            .map_err(|e| Status::invalid_argument(format!("bad parameters: {e}")))?;
    }
    writer
        .finish()
        .map_err(|e| Status::invalid_argument(format!("bad parameters: {e}")))?;
    drop(writer);
    Ok(out)
}

fn decode_ipc(bytes: &[u8]) -> Result<Vec<RecordBatch>, Status> {
    StreamReader::try_new(bytes, None)
        .and_then(|reader| reader.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            Status::invalid_argument(format!("the bound parameters are not Arrow IPC: {e}"))
        })
}

/// The first row of the parameter batches as scalars, one per placeholder.
fn first_row(batches: &[RecordBatch]) -> Result<Vec<ScalarValue>, Status> {
    let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(Vec::new());
    };
    rows_of(batch).into_iter().next().unwrap_or(Ok(Vec::new()))
}

/// Every row of a parameter batch as scalars.
fn rows_of(batch: &RecordBatch) -> Vec<Result<Vec<ScalarValue>, Status>> {
    (0..batch.num_rows())
        .map(|row| {
            batch
                .columns()
                .iter()
                .map(|c| {
                    ScalarValue::try_from_array(c, row)
                        .map_err(|e| Status::invalid_argument(format!("bad parameter value: {e}")))
                })
                .collect()
        })
        .collect()
}

/// A DoPut stream, decoded: its schema (which may change between batches: the writer
/// widens the table when it does) and its record batches.
struct PutStream {
    decoder: FlightDataDecoder,
    schema: Option<SchemaRef>,
}

impl PutStream {
    /// Messages that only carry the command (no Arrow header, as a prepared update without
    /// parameters sends) are skipped.
    fn new(request: Request<PeekableFlightDataStream>) -> Self {
        let data = request
            .into_inner()
            .try_filter(|data| futures::future::ready(!data.data_header.is_empty()))
            .map_err(FlightError::from);
        Self {
            decoder: FlightDataDecoder::new(data),
            schema: None,
        }
    }

    /// The next batch; `None` at the end.
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>, Status> {
        while let Some(decoded) = self.decoder.next().await {
            match decoded.map_err(Status::from)?.payload {
                DecodedPayload::Schema(schema) => self.schema = Some(schema),
                DecodedPayload::RecordBatch(batch) => return Ok(Some(batch)),
                DecodedPayload::None => {}
            }
        }
        Ok(None)
    }

    /// The remaining batches as a stream.
    fn into_stream(
        self,
    ) -> impl Stream<Item = datafusion::common::Result<RecordBatch>> + Send + Unpin {
        Box::pin(futures::stream::unfold(self, |mut put| async move {
            match put.next_batch().await {
                Ok(Some(batch)) => Some((Ok(batch), put)),
                Ok(None) => None,
                Err(status) => Some((Err(DataFusionError::External(Box::new(status))), put)),
            }
        }))
    }
}

async fn read_batches(
    request: Request<PeekableFlightDataStream>,
) -> Result<(SchemaRef, Vec<RecordBatch>), Status> {
    let mut put = PutStream::new(request);
    let mut batches = Vec::new();
    while let Some(batch) = put.next_batch().await? {
        batches.push(batch);
    }
    let schema = batches
        .first()
        .map(|b| b.schema())
        .or(put.schema)
        .unwrap_or_else(|| Arc::new(Schema::empty()));
    Ok((schema, batches))
}

/// The gRPC status for an engine error, with a message that names what to fix.
pub fn status_of(error: &DataFusionError) -> Status {
    let root = error.find_root();
    if let DataFusionError::External(inner) = root
        && let Some(table_error) = inner.downcast_ref::<TableError>()
    {
        let message = table_error.to_string();
        return match table_error {
            TableError::Catalog(CatalogError::NotFound(_)) => Status::not_found(message),
            TableError::Catalog(CatalogError::AlreadyExists(_)) => Status::already_exists(message),
            TableError::Catalog(
                CatalogError::InvalidArgument { .. } | CatalogError::SchemaChange { .. },
            )
            | TableError::TypeMismatch { .. }
            | TableError::UnmappedType { .. }
            | TableError::NullInNotNull { .. }
            | TableError::InvalidArgument { .. } => Status::invalid_argument(message),
            e if e.is_retryable() => Status::unavailable(message),
            _ => Status::internal(message),
        };
    }
    if let DataFusionError::External(inner) = root
        && let Some(source_error) = inner.downcast_ref::<SourceError>()
    {
        let message = source_error.to_string();
        return if source_error.source.is_retryable() {
            Status::unavailable(message)
        } else {
            Status::failed_precondition(message)
        };
    }
    let message = root.to_string();
    match root {
        DataFusionError::SchemaError(e, _)
            if matches!(e.as_ref(), SchemaError::FieldNotFound { .. }) =>
        {
            Status::invalid_argument(message)
        }
        DataFusionError::Plan(m) if m.contains("not found") => Status::not_found(message),
        DataFusionError::SQL(..) | DataFusionError::Plan(_) | DataFusionError::SchemaError(..) => {
            Status::invalid_argument(message)
        }
        DataFusionError::NotImplemented(_) => Status::unimplemented(message),
        DataFusionError::ResourcesExhausted(_) => Status::resource_exhausted(message),
        DataFusionError::ArrowError(..) | DataFusionError::Execution(_) => {
            Status::invalid_argument(message)
        }
        _ => Status::internal(message),
    }
}

static SQL_INFO: LazyLock<SqlInfoData> = LazyLock::new(|| {
    let mut builder = SqlInfoDataBuilder::new();
    builder.append(SqlInfo::FlightSqlServerName, "kyma");
    builder.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    builder.append(SqlInfo::FlightSqlServerArrowVersion, "59");
    builder.append(SqlInfo::FlightSqlServerReadOnly, false);
    builder.append(SqlInfo::FlightSqlServerSql, true);
    builder.append(SqlInfo::FlightSqlServerSubstrait, false);
    builder.append(SqlInfo::FlightSqlServerTransaction, 0_i32);
    builder.append(SqlInfo::FlightSqlServerCancel, false);
    builder.append(SqlInfo::FlightSqlServerBulkIngestion, true);
    builder.append(SqlInfo::SqlDdlCatalog, false);
    builder.append(SqlInfo::SqlDdlSchema, false);
    builder.append(SqlInfo::SqlDdlTable, true);
    builder.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    builder.append(SqlInfo::SqlIdentifierCase, 3_i32);
    builder.append(SqlInfo::SqlQuotedIdentifierCase, 3_i32);
    builder.append(SqlInfo::SqlAllTablesAreSelectable, true);
    builder.append(SqlInfo::SqlNullOrdering, 2_i32);
    // Building from the fixed values above cannot fail; an empty set is the safe fallback.
    builder.build().unwrap_or_else(|_| {
        SqlInfoDataBuilder::new()
            .build()
            .unwrap_or_else(|_| unreachable!("an empty SqlInfo set always builds"))
    })
});

fn primary_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_name", DataType::Utf8, true),
        Field::new("key_sequence", DataType::Int32, false),
    ]))
}

#[tonic::async_trait]
impl FlightSqlService for KymaFlightSqlService {
    type FlightService = KymaFlightSqlService;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        // The auth interceptor has already checked the credentials (basic or bearer).
        let _ = request;
        let payload = self
            .token
            .as_deref()
            .unwrap_or_default()
            .as_bytes()
            .to_vec();
        let response = HandshakeResponse {
            protocol_version: 0,
            payload: payload.into(),
        };
        let mut out: Response<
            Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>,
        > = Response::new(Box::pin(futures::stream::once(async { Ok(response) })));
        if let Some(token) = &self.token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| Status::internal("the auth token is not a valid header value"))?;
            out.metadata_mut().insert("authorization", value);
        }
        Ok(out)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.fence(request.metadata()).await?;
        let handle = Handle {
            sql: query.query,
            ..Handle::default()
        };
        self.statement_info(handle, request.into_inner()).await
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.fence(request.metadata()).await?;
        let handle = Handle::decode(&cmd.prepared_statement_handle)?;
        self.statement_info(handle, request.into_inner()).await
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&query, &query.into_builder().schema(), request)
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&query, &query.clone().into_builder().schema(), request)
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&query, &query.clone().into_builder().schema(), request)
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&query, &query.into_builder().schema(), request)
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(
            &query,
            &query.clone().into_builder(&SQL_INFO).schema(),
            request,
        )
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&query, &primary_keys_schema(), request)
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.fence(request.metadata()).await?;
        let handle = Handle::decode(&ticket.statement_handle)?;
        Ok(Response::new(self.outcome_stream(&handle).await?))
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.fence(request.metadata()).await?;
        let handle = Handle::decode(&query.prepared_statement_handle)?;
        Ok(Response::new(self.outcome_stream(&handle).await?))
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        let mut names = self.engine.session().catalog_names();
        names.sort();
        for name in names {
            builder.append(name);
        }
        Ok(Response::new(batch_stream(
            builder.build().map_err(Status::from)?,
        )))
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        let ctx = self.engine.session();
        let mut names = ctx.catalog_names();
        names.sort();
        for catalog_name in names {
            if let Some(catalog) = ctx.catalog(&catalog_name) {
                for schema in catalog.schema_names() {
                    builder.append(&catalog_name, schema);
                }
            }
        }
        Ok(Response::new(batch_stream(
            builder.build().map_err(Status::from)?,
        )))
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for (catalog, schema, table, kind, table_schema) in self.catalog_entries().await {
            builder
                .append(
                    catalog,
                    schema,
                    table,
                    kind,
                    &wire::client_schema(&table_schema),
                )
                .map_err(Status::from)?;
        }
        Ok(Response::new(batch_stream(
            builder.build().map_err(Status::from)?,
        )))
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        builder.append("TABLE");
        builder.append("VIEW");
        Ok(Response::new(batch_stream(
            builder.build().map_err(Status::from)?,
        )))
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let batch = query
            .into_builder(&SQL_INFO)
            .build()
            .map_err(Status::from)?;
        Ok(Response::new(batch_stream(batch)))
    }

    async fn do_get_primary_keys(
        &self,
        _query: CommandGetPrimaryKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        // Native kyma tables declare no primary key.
        Ok(Response::new(batch_stream(RecordBatch::new_empty(
            primary_keys_schema(),
        ))))
    }

    async fn do_put_statement_update(
        &self,
        ticket: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        self.fence(request.metadata()).await?;
        self.run_update(&ticket.query, Vec::new()).await
    }

    async fn do_put_statement_ingest(
        &self,
        ticket: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        if ticket.temporary {
            return Err(Status::invalid_argument(
                "temporary tables are not supported; ingest into a regular table",
            ));
        }
        if ticket.transaction_id.is_some() {
            return Err(Status::invalid_argument(
                "transactions are not supported; ingest without one",
            ));
        }
        let options = ticket.table_definition_options.unwrap_or_default();
        let not_exist = TableNotExistOption::try_from(options.if_not_exist)
            .unwrap_or(TableNotExistOption::Unspecified);
        let exists = TableExistsOption::try_from(options.if_exists)
            .unwrap_or(TableExistsOption::Unspecified);
        let mode = match (not_exist, exists) {
            (
                TableNotExistOption::Create,
                TableExistsOption::Fail | TableExistsOption::Unspecified,
            ) => IngestMode::Create,
            (TableNotExistOption::Create, TableExistsOption::Append) => IngestMode::CreateAppend,
            (TableNotExistOption::Create, TableExistsOption::Replace) => IngestMode::Replace,
            (
                TableNotExistOption::Fail | TableNotExistOption::Unspecified,
                TableExistsOption::Append,
            ) => IngestMode::Append,
            (
                TableNotExistOption::Fail | TableNotExistOption::Unspecified,
                TableExistsOption::Replace,
            ) => IngestMode::Replace,
            _ => {
                return Err(Status::invalid_argument(
                    "ingest options: choose create, append, replace or create_append",
                ));
            }
        };
        let table = kyma_catalog::TableRef::new(
            ticket.catalog.as_deref().unwrap_or(KYMA_CATALOG),
            ticket.schema.as_deref().unwrap_or(DEFAULT_SCHEMA),
            &ticket.table,
        );
        let mut put = PutStream::new(request);
        // The schema arrives before the first batch; an empty stream still creates the table.
        let first = put.next_batch().await?;
        let schema = match (&first, &put.schema) {
            (Some(batch), _) => batch.schema(),
            (None, Some(schema)) => schema.clone(),
            (None, None) => {
                return Err(Status::invalid_argument(
                    "the ingest stream carried no schema",
                ));
            }
        };
        let batches = futures::stream::iter(first.map(Ok)).chain(put.into_stream());
        let started = Instant::now();
        let result = self
            .engine
            .ingest(&table, mode, &schema, Box::pin(batches))
            .await;
        self.metrics.statement(started.elapsed(), result.is_ok());
        self.metrics.completed(started.elapsed());
        let rows = result.map_err(|e| status_of(&e))?;
        self.metrics.rows_ingested(rows);
        Ok(i64::try_from(rows).unwrap_or(i64::MAX))
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let mut handle = Handle::decode(&query.prepared_statement_handle)?;
        let (schema, batches) = read_batches(request).await?;
        handle.params = Some(encode_ipc(&batches, &schema)?);
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle.encode()),
        })
    }

    async fn do_put_prepared_statement_update(
        &self,
        query: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        self.fence(request.metadata()).await?;
        let handle = Handle::decode(&query.prepared_statement_handle)?;
        let (_, batches) = read_batches(request).await?;
        let mut rows: Vec<Vec<ScalarValue>> = Vec::new();
        for batch in &batches {
            for row in rows_of(batch) {
                rows.push(row?);
            }
        }
        if rows.is_empty() {
            rows.push(handle.parameters()?);
        }
        let mut total = 0_i64;
        for params in rows {
            total = total.saturating_add(self.run_update(&handle.sql, params).await?.max(0));
        }
        Ok(total)
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let started = Instant::now();
        let described = match self.engine.describe(&query.query).await {
            Ok(described) => described,
            Err(e) => return Err(self.refused(&query.query, started, &e)),
        };
        let parameters = Schema::new(
            described
                .parameters
                .iter()
                .map(|(name, ty)| Field::new(name, ty.clone().unwrap_or(DataType::Null), true))
                .collect::<Vec<_>>(),
        );
        let handle = Handle {
            sql: query.query,
            ..Handle::default()
        };
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.encode(),
            dataset_schema: schema_ipc(&wire::client_schema(&described.schema))?,
            parameter_schema: schema_ipc(&parameters)?,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        // Handles carry their statement; there is nothing to free.
        Ok(())
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// A statement on its way into `kyma.system.queries`: recorded when dropped.
struct QueryTracker {
    log: Arc<QueryLog>,
    metrics: Arc<QueryMetrics>,
    record: QueryRecord,
    started: Instant,
    plan: Option<Arc<dyn ExecutionPlan>>,
    finished: bool,
}

impl QueryTracker {
    fn new(
        log: Arc<QueryLog>,
        metrics: Arc<QueryMetrics>,
        query_id: Option<String>,
        sql: &str,
    ) -> Self {
        let started_at_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        Self {
            log,
            metrics,
            record: QueryRecord {
                query_id: query_id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
                sql: sql.to_owned(),
                started_at_us,
                duration_ms: 0.0,
                rows: 0,
                source_bytes: 0,
                pushdown: Vec::new(),
                error: None,
            },
            started: Instant::now(),
            plan: None,
            finished: false,
        }
    }

    fn fail(&mut self, error: String) {
        self.record.error = Some(error);
        self.finished = true;
    }
}

impl Drop for QueryTracker {
    fn drop(&mut self) {
        let mut record = self.record.clone();
        let elapsed = self.started.elapsed();
        record.duration_ms = elapsed.as_secs_f64() * 1000.0;
        self.metrics.completed(elapsed);
        self.metrics.pushdown(&record.pushdown);
        if let Some(plan) = &self.plan {
            record.source_bytes = source_bytes(plan);
        }
        if !self.finished {
            record.error = Some("the client stopped reading before the last row".into());
        }
        self.log.record(record);
    }
}

/// A query's rows, counted into its tracker.
struct TrackedStream {
    inner: SendableRecordBatchStream,
    tracker: QueryTracker,
}

impl Stream for TrackedStream {
    type Item = datafusion::common::Result<RecordBatch>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let polled = self.inner.poll_next_unpin(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(batch))) => {
                self.tracker.record.rows += batch.num_rows() as u64;
            }
            std::task::Poll::Ready(Some(Err(e))) => self.tracker.fail(e.to_string()),
            std::task::Poll::Ready(None) => self.tracker.finished = true,
            std::task::Poll::Pending => {}
        }
        polled
    }
}
