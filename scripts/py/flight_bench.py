"""The Flight benchmark's python side: pyarrow's own Flight server serving a flyt curation's score table the way
flyt serve does (one endpoint per shard; uid, key, shard, the method columns, score), and the client that reads
a `scores` flight with parallel DoGets from either server.
    python flight_bench.py serve PORT OUT_DIR
    python flight_bench.py read PORT THREADS      -> one JSON line: rows, bytes, seconds"""
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as fl
import pyarrow.parquet as pq


class ScoreServer(fl.FlightServerBase):
    def __init__(self, location, out):
        super().__init__(location)
        self.out = out
        self.shards = [s["name"] for s in json.load(open(f"{out}/manifest.json"))["shards"]]

    def table(self, shard):
        t = pq.read_table(f"{self.out}/shards/{shard}.scores.parquet")
        t = t.append_column("score", pc.cast(t.column("clip_score"), pa.float64()))
        return t.add_column(2, "shard", pa.array([shard] * t.num_rows))

    def get_flight_info(self, context, descriptor):
        schema = self.table(self.shards[0]).schema
        endpoints = [fl.FlightEndpoint(f"scores/{s}".encode(), []) for s in self.shards]
        return fl.FlightInfo(schema, descriptor, endpoints, -1, -1)

    def do_get(self, context, ticket):
        return fl.RecordBatchStream(self.table(ticket.ticket.decode().split("/", 1)[1]))


def read(port, threads):
    c = fl.connect(f"grpc://127.0.0.1:{port}")
    info = c.get_flight_info(fl.FlightDescriptor.for_path("scores"))

    def one(e):
        t = fl.connect(f"grpc://127.0.0.1:{port}").do_get(e.ticket).read_all()
        return t.num_rows, t.nbytes

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        got = list(pool.map(one, info.endpoints))
    secs = time.perf_counter() - start
    print(json.dumps({"rows": sum(r for r, _ in got), "bytes": sum(b for _, b in got), "seconds": secs}))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        server = ScoreServer(f"grpc://127.0.0.1:{sys.argv[2]}", sys.argv[3])
        server.serve()
    else:
        read(sys.argv[2], int(sys.argv[3]))
