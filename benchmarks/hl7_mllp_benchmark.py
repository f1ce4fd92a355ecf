#!/usr/bin/env python3
"""HL7 v2 MLLP benchmark: ADT messages stored and acknowledged per second, ours against python-hl7's
bare asyncio MLLP server (which only acknowledges), over one connection and over four, same run.

One run, in a temporary directory and a scratch PostgreSQL database that it creates and drops:

1. generates `--messages` ADT^A01 messages (2.5.1; each a new patient with two identifiers, name,
   birth date, sex, address, phone and a Z-segment), framed before the clock starts;
2. for each number of connections (`--connections`, 1 and 4) and each receiver in turn:
   - ours: `python manage.py mllp_listener` on the migrated scratch database (every message
     stored raw, a FHIR Patient written, the row marked processed, then AA);
   - python-hl7: `hl7.mllp.start_hl7_server` in its own process, answering every message with
     `message.create_ack()` and storing nothing: the ceiling of an asyncio MLLP server in Python;
   sends the messages over that many connections (a thread per connection, each sending its share
   one at a time and waiting for each ACK, as EHRs do) and takes the wall time from the first send
   to the last ACK. Every ACK must be AA for its message's control ID; for ours the processed rows
   and the Patients are counted in the database afterwards;
3. prints a markdown table (messages/s, ratio to python-hl7's, the target of issue 6: at least 300
   ADT messages/s on one connection with PostgreSQL) and appends it with a description of the
   machine to docs/benchmarks.md (not with `--no-record`, nor for fewer than 2,000 messages).

    .venv/bin/python benchmarks/hl7_mllp_benchmark.py                             # full size
    .venv/bin/python benchmarks/hl7_mllp_benchmark.py --messages 300 --no-record  # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg2
from fhir_benchmark import (
    create_database,
    database_url,
    drop_database,
    free_port,
    launch,
    load_average,
    machine_description,
    manage,
    record,
    stop_group,
    wait_ready,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
MANAGE_PY = REPO_ROOT / "manage.py"
TARGET_ONE_CONNECTION = 300.0
FULL_MESSAGES = 2000


def make_messages(count: int, run: str) -> list[tuple[str, bytes]]:
    """(control id, framed message) for `count` ADT^A01 of new patients."""
    messages = []
    for n in range(count):
        control = f"B{run}{n:06d}"
        text = "\r".join(
            [
                f"MSH|^~\\&|BENCHEHR|GENHOSP|BTTHEALTH|RADIOLOGY|20240311083000||ADT^A01^ADT_A01|{control}|P|2.5.1|||AL|NE||UNICODE UTF-8",
                "EVN|A01|20240311082955",
                f"PID|1||M{run}{n:06d}^^^GENHOSP^MR~S{run}{n:06d}^^^SSA^SS||Bench^Patient{n}^Q||19{n % 90 + 10:02d}0{n % 9 + 1}1{n % 9}|{'MF'[n % 2]}|||{n} Main St^^Springfield^IL^62701^USA^H||^PRN^PH^^1^555^{n:07d}",
                "PV1|1|O|RAD^101^1^GENHOSP",
                "ZPD|bench|Y",
            ]
        )
        messages.append((control, b"\x0b" + (text + "\r").encode() + b"\x1c\r"))
    return messages


def _read_ack(sock: socket.socket, buffer: bytearray) -> bytes:
    while True:
        end = buffer.find(b"\x1c")
        if end >= 0:
            ack = bytes(buffer[:end]).strip(b"\x0b\r\n")
            del buffer[: end + 2]
            return ack
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the receiver closed the connection")
        buffer += chunk


def push(port: int, messages: list[tuple[str, bytes]], connections: int) -> tuple[float, list[str]]:
    """Send the messages over `connections` connections; (seconds, problems)."""
    shares = [messages[i::connections] for i in range(connections)]
    problems: list[str] = []
    sockets = []
    for _ in range(connections):
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sockets.append(sock)
    barrier = threading.Barrier(connections + 1)

    def run(sock: socket.socket, share: list[tuple[str, bytes]]) -> None:
        buffer = bytearray()
        barrier.wait()
        for control, framed in share:
            sock.sendall(framed)
            ack = _read_ack(sock, buffer)
            if f"MSA|AA|{control}".encode() not in ack:
                problems.append(f"{control}: {ack[:200]!r}")

    threads = [
        threading.Thread(target=run, args=(s, share)) for s, share in zip(sockets, shares, strict=True)
    ]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for sock in sockets:
        sock.close()
    return elapsed, problems


def serve_bare_peer(port: int) -> None:
    """python-hl7's asyncio MLLP server that only acknowledges (run in a child process)."""
    import hl7.mllp

    async def handle(reader, writer) -> None:
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                writer.writemessage(message.create_ack())
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await hl7.mllp.start_hl7_server(handle, "127.0.0.1", port)
        print(f"peer listening on {port}", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class Result:
    receiver: str
    connections: int
    messages: int
    seconds: float
    problems: list[str]
    stored: int | None = None

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


def count_stored(db_url: str, prefix: str) -> int:
    with psycopg2.connect(db_url) as conn, conn.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM hl7v2_inboundmessage WHERE state = 'processed' AND control_id LIKE %s",
            [prefix + "%"],
        )
        return cursor.fetchone()[0]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--messages", type=int, default=FULL_MESSAGES, help="ADT messages per measurement")
    parser.add_argument("--connections", default="1,4", help="comma-separated numbers of connections")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
        help="PostgreSQL URL of a role that may create databases (env BENCH_PG_URL)",
    )
    parser.add_argument("--db-name", default="btt_hl7_bench", help="scratch database, dropped at the end")
    parser.add_argument("--workers", type=int, default=8, help="BTT_MLLP_WORKERS of our listener")
    parser.add_argument("--no-record", action="store_true", help="do not append to docs/benchmarks.md")
    parser.add_argument("--peer-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.command_line = ["benchmarks/hl7_mllp_benchmark.py", *(argv if argv is not None else sys.argv[1:])]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.peer_server:
        serve_bare_peer(args.peer_server)
        return 0
    counts = [int(c) for c in args.connections.split(",") if c.strip()]
    load_before = load_average()
    work = Path(tempfile.mkdtemp(prefix="btt-hl7-bench-"))
    pg_version = create_database(args.pg_url, args.db_name)
    db_url = database_url(args.pg_url, args.db_name)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BTT_", "DJANGO_", "CELERY_")) and k != "DATABASE_URL"
    }
    env.update(
        {
            "DATABASE_URL": db_url,
            "BTT_DATA_DIR": str(work / "data"),
            "BTT_LOG_LEVEL": "WARNING",
            "BTT_MLLP_HOST": "127.0.0.1",
            "BTT_MLLP_WORKERS": str(args.workers),
            "PYTHONUNBUFFERED": "1",
        }
    )
    results: list[Result] = []
    try:
        manage(env, "migrate", "-v0")
        for connections in counts:
            for receiver in ("ours", "python-hl7"):
                port = free_port()
                log = work / f"{receiver}-{connections}.log"
                if receiver == "ours":
                    argv_ = [sys.executable, str(MANAGE_PY), "mllp_listener", "--port", str(port)]
                else:
                    argv_ = [sys.executable, str(Path(__file__).resolve()), "--peer-server", str(port)]
                process = launch(argv_, {**env, "BTT_MLLP_PORT": str(port)}, log)
                try:
                    wait_ready(process, lambda p=port: port_open(p), receiver, log, 60)
                    run = f"{receiver[0]}{connections}{int(time.time()) % 100000}"
                    messages = make_messages(args.messages, run)
                    push(port, messages[:20], 1)  # warm-up (connections, code paths), not measured
                    seconds, problems = push(port, messages[20:], connections)
                    result = Result(receiver, connections, len(messages) - 20, seconds, problems)
                    if receiver == "ours":
                        result.stored = count_stored(db_url, f"B{run}") - 20
                    results.append(result)
                    print(
                        f"{receiver}, {connections} connection(s): {result.rate:.0f} messages/s", flush=True
                    )
                finally:
                    stop_group(process, 20)
    finally:
        drop_database(args.pg_url, args.db_name)
    table = report(results, counts)
    print(table)
    ok = all(not r.problems and (r.stored is None or r.stored == r.messages) for r in results)
    ours_one = next((r for r in results if r.receiver == "ours" and r.connections == 1), None)
    passed = ok and ours_one is not None and ours_one.rate >= TARGET_ONE_CONNECTION
    if not args.no_record and args.messages >= FULL_MESSAGES:
        record(
            table,
            machine_description(pg_version, load_before),
            args,
            title="HL7 v2 MLLP: ADT messages stored and acknowledged",
        )
    return 0 if passed else 1


def report(results: list[Result], counts: list[int]) -> str:
    peer = {r.connections: r.rate for r in results if r.receiver == "python-hl7"}
    lines = [
        "| receiver | connections | messages | seconds | messages/s | vs python-hl7 bare server | all AA | stored |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        ratio = f"{r.rate / peer[r.connections]:.0%}" if peer.get(r.connections) else "-"
        label = (
            "ours (mllp_listener, PostgreSQL)"
            if r.receiver == "ours"
            else "python-hl7 asyncio server (ACK only)"
        )
        stored = "-" if r.stored is None else str(r.stored)
        lines.append(
            f"| {label} | {r.connections} | {r.messages} | {r.seconds:.2f} | {r.rate:.0f} | {ratio} | "
            f"{'yes' if not r.problems else f'NO ({len(r.problems)})'} | {stored} |"
        )
    ours_one = next((r for r in results if r.receiver == "ours" and r.connections == 1), None)
    if ours_one is not None:
        verdict = "PASS" if ours_one.rate >= TARGET_ONE_CONNECTION else "FAIL"
        lines.append("")
        lines.append(
            f"Target (issue 6): ours ≥ {TARGET_ONE_CONNECTION:.0f} ADT messages/s on one connection: "
            f"{ours_one.rate:.0f} → {verdict}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
