"""MongoDB wire-protocol scripts for `connectors/tests/mongodb_protocol.rs`.

A PyPI `mockupdb` server (MongoDB's wire-protocol test server) answers the Rust driver as the
test's scenario says, and checks what the driver sends. It prints `PORT <n>` once listening
and exits 0 when the conversation went as scripted (non-zero, with the reason, otherwise).
These are protocol tests of kyma's driver calls, not a stand-in for a MongoDB server.

Usage: server.py SCENARIO
"""

import datetime
import sys

from bson import Int64, Timestamp
from mockupdb import MockupDB, OpMsg

NOW = datetime.datetime(2026, 11, 30, tzinfo=datetime.timezone.utc)


def hello(set_name):
    """A primary's `hello`. The Rust driver needs lastWrite.lastWriteDate and reads the sizes
    and the session timeout as Int64."""
    answer = {
        "ismaster": True,
        "isWritablePrimary": True,
        "helloOk": True,
        "minWireVersion": 0,
        "maxWireVersion": 21,
        "maxBsonObjectSize": Int64(16 * 1024 * 1024),
        "maxMessageSizeBytes": 48000000,
        "maxWriteBatchSize": Int64(100000),
        "logicalSessionTimeoutMinutes": Int64(30),
        "lastWrite": {"lastWriteDate": NOW, "opTime": {"ts": Timestamp(1000, 1), "t": Int64(1)}},
    }
    if set_name:
        answer.update({"setName": set_name, "hosts": [], "secondary": False})
    return answer


def token(seconds, increment, rest=""):
    return {"_data": "82%08X%08X%s" % (seconds, increment, rest)}


def event(seconds, increment, op, key):
    return {
        "_id": token(seconds, increment, "04"),
        "operationType": op,
        "clusterTime": Timestamp(seconds, increment),
        "ns": {"db": "app", "coll": "orders"},
        "documentKey": {"_id": key},
        "fullDocument": {"_id": key, "qty": key * 10},
    }


def expect(condition, what):
    if not condition:
        print("FAILED: " + what, flush=True)
        sys.exit(1)


def serve(set_name):
    server = MockupDB(request_timeout=30)
    for name in ("ismaster", "isMaster", "hello"):
        server.autoresponds(name, hello(set_name))
    for name in ("ping", "endSessions", "killCursors"):
        server.autoresponds(name, {"ok": 1})
    server.autoresponds("buildInfo", {"version": "7.0.0"})
    port = server.run()
    print("PORT %d" % port, flush=True)
    return server


def change_stream(server):
    aggregate = server.receives(OpMsg("aggregate"))
    stage = aggregate.doc["pipeline"][0].get("$changeStream")
    expect(stage is not None, "the first stage is $changeStream: %r" % aggregate.doc)
    expect(aggregate.doc["$db"] == "app", "a database's stream: %r" % aggregate.doc)
    expect(stage.get("fullDocument") == "updateLookup", "fullDocument updateLookup: %r" % stage)
    expect("startAfter" not in stage, "a new stream starts now: %r" % stage)
    # An empty first batch whose post-batch resume token is the resume point.
    aggregate.reply({"cursor": {"id": Int64(42), "ns": "app.$cmd.aggregate", "firstBatch": [],
                                "postBatchResumeToken": token(1000, 2)}})
    more = server.receives(OpMsg("getMore", Int64(42)))
    more.reply({"cursor": {"id": Int64(42), "ns": "app.orders",
                           "nextBatch": [event(1000, 3, "insert", 1), event(1000, 4, "insert", 2)],
                           "postBatchResumeToken": token(1000, 4, "04")}})
    dry = server.receives(OpMsg("getMore", Int64(42)))
    dry.reply({"cursor": {"id": Int64(42), "ns": "app.orders", "nextBatch": [],
                          "postBatchResumeToken": token(1000, 9)}})


def history_lost(server):
    aggregate = server.receives(OpMsg("aggregate"))
    stage = aggregate.doc["pipeline"][0]["$changeStream"]
    expect(stage.get("startAfter") == token(1000, 2), "resumed with startAfter: %r" % stage)
    aggregate.command_err(code=286, errmsg="Resume of change stream was not possible, as the resume point may no longer be in the oplog.")


def snapshot(server):
    first = server.receives(OpMsg("find", "kyma_snapshot_time"))
    read = first.doc.get("readConcern", {})
    expect(read.get("level") == "snapshot", "a snapshot read: %r" % first.doc)
    expect("atClusterTime" not in read, "the server picks the time: %r" % first.doc)
    first.reply({"cursor": {"id": Int64(0), "ns": "app.kyma_snapshot_time", "firstBatch": [],
                            "atClusterTime": Timestamp(1000, 7)}})
    copy = server.receives(OpMsg("find", "orders"))
    read = copy.doc.get("readConcern", {})
    expect(read.get("atClusterTime") == Timestamp(1000, 7), "the copy reads at the session's time: %r" % copy.doc)
    copy.reply({"cursor": {"id": Int64(0), "ns": "app.orders",
                           "firstBatch": [{"_id": 1, "qty": 10}, {"_id": 2, "qty": 20}]}})


SCENARIOS = {"change_stream": change_stream, "history_lost": history_lost, "snapshot": snapshot}

if __name__ == "__main__":
    scenario = sys.argv[1]
    mock = serve(None if scenario == "standalone" else "rs0")
    if scenario == "standalone":
        # Only hello is asked; wait for the test to end the process.
        sys.stdin.read()
    else:
        SCENARIOS[scenario](mock)
    print("OK", flush=True)
    mock.stop()
