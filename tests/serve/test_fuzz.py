"""Every route fuzzed from the server's own OpenAPI schema by schemathesis (its examples,
coverage, fuzzing and stateful phases), against real ``partreid serve`` processes on 127.0.0.1:
the run fails on any 5xx, on a request the schema forbids that is accepted, on a response
slower than :data:`MAX_RESPONSE_S`, on the "mostly rejected generated data" warnings (the
schema must say what the routes take), and when a server dies or grows past
:data:`MAX_RSS_BYTES`.

Uploads are real images of the declared types (``fuzz_hooks``), tracklet ids are drawn half of
the time from the store's own, and the stateful phase follows the schema's links from results
to their crops and tracklets. The default run keeps to :data:`EXAMPLES` cases per operation and
phase; ``-m slow`` runs :data:`SLOW_EXAMPLES`.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("schemathesis", reason="the fuzz tests need schemathesis (the dev extra)")

HOST = "127.0.0.1"  # only ever this machine
EXAMPLES = 12
SLOW_EXAMPLES = 150
MAX_RESPONSE_S = 5.0  # any one response; the model runs on a shared CPU
MAX_RSS_BYTES = 3 << 30  # a server that expands a filter into memory goes far past this
ADDRESS_SPACE = 10 << 30  # and cannot take the machine with it
HERE = os.path.dirname(os.path.abspath(__file__))
ALL_PHASES = "examples,coverage,fuzzing,stateful"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _limit_memory() -> None:  # in the server process, before it starts
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def _start(args, log_path):
    port = _free_port()
    cmd = [sys.executable, "-m", "partreid", "serve", *args, "--host", HOST, "--port", str(port)]
    cmd += ["--device", "cpu", "--runtime", "torch"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p] + [env.get("PYTHONPATH", "")])
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_limit_memory
        )
    return {"proc": proc, "url": f"http://{HOST}:{port}", "log": log_path}


def _wait(server, timeout: float = 240.0) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if server["proc"].poll() is not None:
            with open(server["log"]) as f:
                pytest.fail(f"the server exited: {f.read()[-2000:]}")
        try:
            if httpx.get(server["url"] + "/api/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    pytest.fail(f"the server did not answer within {timeout} s")


def _stop(server) -> None:
    proc = server["proc"]
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def servers(serve_setup, store_setup, tmp_path_factory):
    """A store server over a copy of the test store (deletions happen) and a gallery server,
    started together; both stopped at the end."""
    root = tmp_path_factory.mktemp("fuzz")
    store = str(root / "store")
    shutil.copytree(store_setup["store_dir"], store)
    ckpt = serve_setup["checkpoint"]
    cache = os.path.join(serve_setup["root"], "cache")  # the gallery's features are there
    from partreid.store import open_store
    from partreid.store.link import link_store

    with open_store(store) as s:  # site identities: the people routes have someone to show
        link_store(s, threshold=0.6)
        identities = sorted(set(s.tracklets().identity.tolist()))
    st = _start([ckpt, "--store", store, "--cache", str(root / "cache")], str(root / "store.log"))
    gal = _start([ckpt, "--gallery", serve_setup["gallery"], "--cache", cache], str(root / "g.log"))
    try:
        _wait(st)
        _wait(gal)
        with open_store(store) as s:
            tracklets = [r[0] for r in s._db.execute("SELECT key FROM tracklets ORDER BY tid")]
        paths = sorted(os.listdir(serve_setup["gallery"]))[:20]
        yield {
            "store": st,
            "gallery": gal,
            "root": root,
            "tracklets": tracklets,
            "identities": identities,
            "gallery_paths": paths,
        }
    finally:
        _stop(st)
        _stop(gal)


def _config(path, known) -> str:
    """The schemathesis configuration: image uploads, known values of some parameters
    (``{"query.tracklet": (values, probability)}``), the checks' statuses and the warnings
    that fail the run."""
    lines = ['hooks = "fuzz_hooks"', ""]
    for i, (_, (values, _p)) in enumerate(known.items()):
        lines += [f"[dictionaries.known{i}]", f"values = {json.dumps(list(values))}", ""]
    lines += ["[parameters]"]
    for i, (param, (_, p)) in enumerate(known.items()):
        lines += [f'"{param}" = {{ dictionary = "known{i}", probability = {p} }}']
    lines += ["", "[checks.negative_data_rejection]"]
    lines += ["expected-statuses = [400, 401, 404, 405, 410, 413, 415, 422, 429]", ""]
    lines += ["[warnings]"]
    lines += ['fail-on = ["validation_mismatch", "missing_deserializer", "unsupported_regex"]']
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


def fuzz(server, root, name, examples, phases=ALL_PHASES, known=None, only=None, skip=None):
    """Run schemathesis against ``server``; returns its JSON report (the run must pass)."""
    report = os.path.join(root, f"{name}.json")
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file"]
    cmd += [_config(os.path.join(root, f"{name}.toml"), known or {})]
    cmd += ["run", server["url"] + "/openapi.json", "--phases", phases]
    cmd += ["--checks", "not_a_server_error,negative_data_rejection"]
    cmd += ["--max-response-time", str(MAX_RESPONSE_S), "--request-timeout", "30"]
    cmd += ["-n", str(examples), "--seed", "22", "-w", "1", "--generation-database", "none"]
    cmd += ["--report", "json", "--report-json-path", report, "--no-color"]
    cmd += ["--include-path-regex", only] if only else []
    cmd += ["--exclude-path-regex", skip] if skip else []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, *sys.path]))
    res = subprocess.run(  # in the tmp folder: schemathesis keeps a cache where it runs
        cmd, capture_output=True, text=True, env=env, timeout=900, cwd=root
    )
    out = res.stdout + res.stderr
    assert os.path.isfile(report), out[-3000:]
    with open(report) as f:
        rep = json.load(f)
    summary = out[out.rfind("SUMMARY") :] if "SUMMARY" in out else out[-1500:]
    assert res.returncode == 0, out[: out.find("SUMMARY")][-6000:] + summary
    assert rep["test_cases"]["with_failures"] == 0 and not rep["errors"], summary
    assert not any(rep["warnings"][w] for w in ("validation_mismatch", "unsupported_regex"))
    print(f"{name}: {rep['test_cases']['generated']} cases, {summary[-200:]}")
    return rep


def alive(server) -> None:
    """The server still runs, answers, and stayed within its memory bound."""
    import httpx

    assert server["proc"].poll() is None, "the server died"
    assert httpx.get(server["url"] + "/api/health", timeout=10).json()["status"] == "ok"
    with open(f"/proc/{server['proc'].pid}/status") as f:
        hwm = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM"))
    assert hwm < MAX_RSS_BYTES, f"the server's peak memory was {hwm / 2**30:.2f} GiB"


def _accepted(rep, op) -> int:
    rates = rep["valid_rates"].get(op, {})
    return sum(p["accepted"] for p in rates.values())


def _fuzz_everything(servers, examples: int, tag: str) -> None:
    st, gal, root = servers["store"], servers["gallery"], servers["root"]
    known = {
        "query.tracklet": (servers["tracklets"], 0.5),
        "query.track": (servers["tracklets"], 0.3),
        "query.identity": (servers["identities"], 0.5),
    }
    rep = fuzz(st, root, f"store{tag}", examples, known=known, skip="^/api/store/delete")
    # the generated requests reach the logic: each search answers results, not only refusals
    for op in ("POST /api/store/search", "GET /api/store/search_tracklet", "POST /api/heatmap"):
        assert _accepted(rep, op) > 0, (op, rep["valid_rates"].get(op))
    assert rep["phases"]["stateful"]["status"] == "success"
    alive(st)
    # deletions last (they empty the store), without the stateful phase
    phases = "examples,coverage,fuzzing"
    fuzz(st, root, f"delete{tag}", examples, phases, known, only="^/api/store/delete")
    alive(st)
    known = {"query.path": (servers["gallery_paths"], 0.5)}
    rep = fuzz(gal, root, f"gallery{tag}", examples, known=known)
    for op in ("POST /api/search", "GET /api/gallery", "GET /api/gallery/image"):
        assert _accepted(rep, op) > 0, (op, rep["valid_rates"].get(op))
    assert rep["phases"]["stateful"]["status"] == "success"
    alive(gal)


def test_every_route_survives_the_fuzzer(servers):
    _fuzz_everything(servers, EXAMPLES, "")


@pytest.mark.slow
def test_every_route_survives_a_longer_fuzz(servers):
    _fuzz_everything(servers, SLOW_EXAMPLES, "_long")
