"""kyma through the Python clients a data engineer uses: ADBC (adbc_driver_flightsql),
pyarrow.flight, and pandas and Polars reading through ADBC. Run by cli/tests/python_clients.rs
against real `kyma` processes.

    kyma_clients.py session URI        ingest, query, prepared statement, metadata, widening,
                                       bracket access into dynamic, raw pyarrow.flight
    kyma_clients.py after-restart URI  the session's data is all still there
    kyma_clients.py write URI TABLE    ingest a few rows into TABLE
    kyma_clients.py wait-read URI TABLE  poll until TABLE shows those rows (another node)
    kyma_clients.py dataframes URI     pd.read_sql and pl.read_database on the ADBC connection
"""

import json
import sys
import time
import warnings

import adbc_driver_flightsql.dbapi as flight_sql
import pyarrow as pa
import pyarrow.flight as flight


def connect(uri):
    return flight_sql.connect(uri, autocommit=True)


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def logs_table():
    return pa.table(
        {
            "id": pa.array([1, 2, 3], pa.int64()),
            "body": ["login failed", "ok", "not found"],
            "attributes": [
                {"service.name": "auth-svc", "http": {"status_code": 503}},
                {"service.name": "web", "http": {"status_code": 200}},
                {"service.name": "auth-svc", "http": {"status_code": 404}},
            ],
        }
    )


def session(uri):
    with connect(uri) as conn, conn.cursor() as cur:
        # Bulk ingest (CommandStatementIngest) creates the table from the Arrow schema.
        check(cur.adbc_ingest("otel_logs", logs_table(), mode="create") == 3, "ingest count")

        cur.execute("SELECT id, body FROM otel_logs ORDER BY id")
        got = cur.fetch_arrow_table().to_pydict()
        check(got == {"id": [1, 2, 3], "body": ["login failed", "ok", "not found"]}, f"query: {got}")

        # A prepared statement with a bound parameter.
        cur.execute("SELECT body FROM otel_logs WHERE id = ?", parameters=(2,))
        check(cur.fetchall() == [("ok",)], "prepared statement")

        # Bracket access into the dynamic (CBOR) column, compared like typed values.
        cur.execute(
            "SELECT id FROM otel_logs WHERE attributes['service.name'] = 'auth-svc' "
            "AND attributes['http']['status_code'] >= 500"
        )
        check(cur.fetchall() == [(1,)], "bracket access")

        # Clients read dynamic values as JSON text of Arrow's canonical arrow.json type.
        cur.execute("SELECT attributes, attributes['http'] AS http FROM otel_logs WHERE id = 1")
        table = cur.fetch_arrow_table()
        field = table.schema.field("attributes")
        check(getattr(field.type, "extension_name", None) == "arrow.json", f"dynamic is arrow.json: {field}")
        check(field.type.storage_type == pa.string(), f"arrow.json over text: {field}")
        row = table.to_pylist()[0]
        check(json.loads(row["attributes"]) == {"service.name": "auth-svc", "http": {"status_code": 503}}, f"JSON text: {row}")
        check(json.loads(row["http"]) == {"status_code": 503}, f"a path's JSON: {row}")

        # JSON text written by SQL into a dynamic column is parsed; text that is not JSON is refused.
        cur.execute("CREATE TABLE kyma.default.events (id long, attrs dynamic)")
        cur.execute(
            "INSERT INTO events VALUES (5, '{\"service.name\": \"api\", \"http\": {\"status_code\": 502}}')"
        )
        cur.execute("SELECT id FROM events WHERE attrs['http']['status_code'] = 502")
        check(cur.fetchall() == [(5,)], "JSON inserted by SQL is found by bracket paths")
        try:
            cur.execute("INSERT INTO events VALUES (6, 'not json')")
            check(False, "text that is not JSON was stored in a dynamic column")
        except flight_sql.Error as e:
            check("must be JSON" in str(e) and "not json" in str(e), f"not-JSON error: {e}")
        # A constant folds to a non-null column; it still streams the schema it announced.
        cur.execute("SELECT upper('a') AS u")
        check(cur.fetchall() == [("A",)], "a constant query")
        cur.execute("SELECT parse_json('{\"a\": [10, 20]}')['a'][1] AS second")
        check(json.loads(cur.fetchall()[0][0]) == 20, "parse_json in an expression")

        # An ingested arrow.json column becomes a dynamic column; bad JSON is refused naming it.
        docs = pa.table({"id": pa.array([1], pa.int64()),
                         "doc": pa.array(['{"k": {"n": 7}}'], pa.json_(pa.string()))})
        check(cur.adbc_ingest("json_docs", docs, mode="create") == 1, "arrow.json ingest")
        cur.execute("SELECT doc['k']['n'] = 7 AS found FROM json_docs")
        check(cur.fetchall() == [(True,)], "an ingested arrow.json column reads as dynamic")
        bad = pa.table({"id": pa.array([2], pa.int64()), "doc": pa.array(["{oops"], pa.json_(pa.string()))})
        try:
            cur.adbc_ingest("json_docs", bad, mode="append")
            check(False, "an arrow.json column that is not JSON was ingested")
        except flight_sql.Error as e:
            check("`doc`" in str(e) and "not JSON" in str(e), f"arrow.json ingest error: {e}")

        # A batch carrying a column the table lacks widens the schema; older rows read NULL.
        more = pa.table({"id": pa.array([4], pa.int64()), "body": ["slow"], "latency_ms": [812.5]})
        check(cur.adbc_ingest("otel_logs", more, mode="append") == 1, "append count")
        cur.execute("SELECT id, latency_ms FROM otel_logs ORDER BY id")
        check(
            cur.fetchall() == [(1, None), (2, None), (3, None), (4, 812.5)],
            "widened schema",
        )

        # SQL DDL and DML with kyma types.
        cur.execute("CREATE TABLE kyma.default.embeddings (id long, v vector(3))")
        cur.execute("INSERT INTO embeddings VALUES (1, [0.5, 1.0, 1.5])")
        cur.execute("SELECT v FROM embeddings")
        check(cur.fetchall() == [([0.5, 1.0, 1.5],)], "vector round trip")

        # Errors arrive as exceptions naming the problem; the connection survives them.
        try:
            cur.execute("SELECT * FROM no_such_table")
            raise AssertionError("an unknown table must fail")
        except flight_sql.Error as e:
            check("no_such_table" in str(e), f"error names the table: {e}")
        cur.execute("SELECT count(*) FROM otel_logs")
        check(cur.fetchall() == [(4,)], "connection still usable after an error")

        # Read-your-writes travels as a call header, set as an ADBC statement option; this
        # standalone has no sync connector, so naming one is refused, naming it.
        header = "adbc.flight.sql.rpc.call_header.x-kyma-min-position"
        cur.adbc_statement.set_options(**{header: "pg_prod=0/16B3748"})
        try:
            cur.execute("SELECT count(*) FROM otel_logs")
            raise AssertionError("a fence on an unknown connector must fail")
        except flight_sql.Error as e:
            check("connector `pg_prod`, which does not exist" in str(e), f"fence error: {e}")

    with connect(uri) as conn:
        # Metadata: get_objects and get_table_schema.
        objects = conn.adbc_get_objects(depth="all", catalog_filter="kyma").read_all().to_pylist()
        tables = {
            t["table_name"]: [c["column_name"] for c in t["table_columns"]]
            for catalog in objects
            for schema in catalog["catalog_db_schemas"]
            if schema["db_schema_name"] == "default"
            for t in schema["db_schema_tables"]
        }
        check(tables.get("otel_logs") == ["id", "body", "attributes", "latency_ms"], f"get_objects: {tables}")
        schema = conn.adbc_get_table_schema("otel_logs", catalog_filter="kyma", db_schema_filter="default")
        check(getattr(schema.field("attributes").type, "extension_name", None) == "arrow.json", f"dynamic is arrow.json: {schema}")
        check(schema.field("latency_ms").type == pa.float64(), f"widened column type: {schema}")

    # pyarrow.flight speaks Flight SQL too: GetFlightInfo with a CommandStatementQuery, DoGet.
    client = flight.FlightClient(uri)
    info = client.get_flight_info(flight.FlightDescriptor.for_command(statement_query("SELECT count(*) AS n FROM otel_logs")))
    table = client.do_get(info.endpoints[0].ticket).read_all()
    check(table.column("n").to_pylist() == [4], f"pyarrow.flight: {table}")


def after_restart(uri):
    with connect(uri) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, latency_ms FROM otel_logs ORDER BY id")
        check(cur.fetchall() == [(1, None), (2, None), (3, None), (4, 812.5)], "rows survive a restart")
        cur.execute("SELECT v FROM embeddings")
        check(cur.fetchall() == [([0.5, 1.0, 1.5],)], "vectors survive a restart")


def write(uri, table):
    with connect(uri) as conn, conn.cursor() as cur:
        data = pa.table({"id": pa.array([10, 20, 30], pa.int64()), "who": ["a", "b", "c"]})
        check(cur.adbc_ingest(table, data, mode="create") == 3, "ingest on the writing node")


def wait_read(uri, table):
    deadline = time.monotonic() + 30
    with connect(uri) as conn, conn.cursor() as cur:
        while True:
            try:
                cur.execute(f"SELECT id, who FROM {table} ORDER BY id")
                rows = cur.fetchall()
                if rows == [(10, "a"), (20, "b"), (30, "c")]:
                    return
            except flight_sql.Error:
                rows = None  # not visible on this node yet
            if time.monotonic() > deadline:
                raise AssertionError(f"the other node's commit never became visible: {rows}")
            time.sleep(0.05)


def dataframes(uri):
    import pandas as pd
    import polars as pl

    with connect(uri) as conn, conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE kyma.default.trips "
            "(id long NOT NULL, city string, fare real, paid bool, at timestamp, riders long)"
        )
        cur.execute(
            "INSERT INTO trips VALUES "
            "(1, 'Oslo', 12.5, true, TIMESTAMP '2024-05-01 12:00:00', 2), "
            "(2, 'Lima', 7.25, false, TIMESTAMP '2024-05-01 12:30:00', NULL), "
            "(3, 'Oslo', 30.0, true, TIMESTAMP '2024-05-02 08:15:00', 1)"
        )

        # Both take the ADBC DBAPI connection as it is: pandas must not warn that it is not
        # SQLAlchemy, and Polars needs execute_options only to pass parameters.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            df = pd.read_sql("SELECT * FROM trips ORDER BY id", conn)
            by_city = pd.read_sql(
                "SELECT city, count(*) AS n, sum(fare) AS total FROM trips GROUP BY city ORDER BY city", conn
            )
            pl_df = pl.read_database("SELECT * FROM trips ORDER BY id", conn)
            one = pl.read_database(
                "SELECT city FROM trips WHERE id = ?", conn, execute_options={"parameters": (2,)}
            )
        check(not caught, f"warnings: {[str(w.message) for w in caught]}")

        dtypes = {name: str(dtype) for name, dtype in df.dtypes.items()}
        check(
            dtypes
            == {
                "id": "int64",
                "city": "str",
                "fare": "float64",
                "paid": "bool",
                "at": "datetime64[us, UTC]",
                "riders": "float64",  # a long with a NULL: pandas' NaN
            },
            f"pandas dtypes: {dtypes}",
        )
        check(len(df) == 3 and df["id"].tolist() == [1, 2, 3], f"pandas rows: {df}")
        check(df["city"].tolist() == ["Oslo", "Lima", "Oslo"], f"pandas strings: {df}")
        check(df["fare"].tolist() == [12.5, 7.25, 30.0], f"pandas reals: {df}")
        check(df["paid"].tolist() == [True, False, True], f"pandas bools: {df}")
        check(df["at"][2] == pd.Timestamp("2024-05-02 08:15:00", tz="UTC"), f"pandas timestamps: {df}")
        check(df["riders"][0] == 2 and pd.isna(df["riders"][1]), f"pandas NULL: {df}")
        check(
            by_city.to_dict("list") == {"city": ["Lima", "Oslo"], "n": [1, 2], "total": [7.25, 42.5]},
            f"pandas aggregate: {by_city}",
        )
        check(str(by_city.dtypes["n"]) == "int64", f"count(*) dtype: {by_city.dtypes}")

        check(
            pl_df.schema
            == pl.Schema(
                {
                    "id": pl.Int64,
                    "city": pl.String,
                    "fare": pl.Float64,
                    "paid": pl.Boolean,
                    "at": pl.Datetime("us", "UTC"),
                    "riders": pl.Int64,
                }
            ),
            f"polars schema: {pl_df.schema}",
        )
        check(pl_df.height == 3, f"polars rows: {pl_df}")
        check(pl_df["riders"].to_list() == [2, None, 1], f"polars NULL stays a null Int64: {pl_df}")
        check(pl_df["city"].to_list() == ["Oslo", "Lima", "Oslo"], f"polars strings: {pl_df}")
        check(pl_df["at"][0].isoformat() == "2024-05-01T12:00:00+00:00", f"polars timestamps: {pl_df}")
        check(one.to_dict(as_series=False) == {"city": ["Lima"]}, f"polars parameter: {one}")


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def length_delimited(field, data):
    return varint(field << 3 | 2) + varint(len(data)) + data


def statement_query(sql):
    """protobuf Any{type_url, value=CommandStatementQuery{query}} by hand."""
    command = length_delimited(1, sql.encode())
    return length_delimited(1, b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery") + length_delimited(2, command)


if __name__ == "__main__":
    commands = {
        "session": session,
        "after-restart": after_restart,
        "write": write,
        "wait-read": wait_read,
        "dataframes": dataframes,
    }
    commands[sys.argv[1]](*sys.argv[2:])
    print(f"{sys.argv[1]}: ok")
