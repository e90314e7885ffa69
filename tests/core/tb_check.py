#!/usr/bin/python3
"""Independent checks of lockstep's TensorBoard event files (core/tensorboard.h).

1. Runs `core_tests --gtest_filter=TensorBoardSample.Write`, which writes three log directories
   (fresh/: update_freq 2, histogram_freq 1, epoch_lr and epoch_learning_rate; reference/: an
   uninterrupted run; resumed/: the same run killed behind its epoch logs and resumed from an older
   checkpoint) plus expect.txt (the points each tag must end with) and keras.json.
2. Decodes every file with a reader written here from ../shared/reference/tensorboard-events.md
   (Python standard library only: its own CRC-32C, its own protobuf wire decoder), checks framing,
   the version record, the file names, every summary's dtype/shape/plugin, the histograms, the tag
   set and steps of reference §2.2, and loads the runs with TensorBoard's Python-loader rules
   (SessionLog START purges) and RustBoard's (a new step drops the tag's later points): the resumed
   run must read exactly like the uninterrupted one under both. The same reader is run on the real
   Keras files in ../shared/datasets/tfevents/ (skipped when absent).
3. Where `pip install tensorboard` works (a venv cached in the build tree; skipped with a message
   when PyPI is unreachable, and not retried for a day), TensorBoard itself reads the logs:
   EventAccumulator (with its data_compat migration) and both loaders of `tensorboard` the server
   (--load_fast=false: Python; --load_fast=true: RustBoard) over its HTTP API, and the graph plugin
   turns the `keras` tag into a graph.

Exit status 0 when everything that could run passed.
"""

import argparse
import json
import math
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

FAILURES = []


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print("FAIL:", what)
    return cond


# ---- CRC-32C and TFRecord framing (reference §1.2) ------------------------------------------------

def _crc_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC_TABLE = _crc_table()


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked(c):
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def records(path):
    """The payloads of a complete, uncorrupted TFRecord file (raises ValueError otherwise)."""
    data = open(path, "rb").read()
    out, off = [], 0
    while off < len(data):
        if len(data) - off < 12:
            raise ValueError("%s: %d stray bytes at %d" % (path, len(data) - off, off))
        (n,) = struct.unpack_from("<Q", data, off)
        (lcrc,) = struct.unpack_from("<I", data, off + 8)
        if masked(crc32c(data[off:off + 8])) != lcrc:
            raise ValueError("%s: length CRC mismatch at %d" % (path, off))
        if off + 12 + n + 4 > len(data):
            raise ValueError("%s: record at %d runs past the end" % (path, off))
        payload = data[off + 12:off + 12 + n]
        (dcrc,) = struct.unpack_from("<I", data, off + 12 + n)
        if masked(crc32c(payload)) != dcrc:
            raise ValueError("%s: data CRC mismatch at %d" % (path, off))
        out.append(payload)
        off += 12 + n + 4
    return out


# ---- protobuf wire format ------------------------------------------------------------------------

def varint(buf, i):
    v, shift = 0, 0
    while True:
        b = buf[i]
        i += 1
        v |= (b & 0x7F) << shift
        if not b & 0x80:
            return v, i
        shift += 7


def fields(buf):
    """{field number: [(wire type, value)]}, values in order; length-delimited values as bytes."""
    out, i = {}, 0
    while i < len(buf):
        key, i = varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = varint(buf, i)
        elif wt == 1:
            v = buf[i:i + 8]
            i += 8
        elif wt == 5:
            v = buf[i:i + 4]
            i += 4
        elif wt == 2:
            n, i = varint(buf, i)
            v = buf[i:i + n]
            i += n
            if len(v) != n:
                raise ValueError("truncated length-delimited field %d" % num)
        else:
            raise ValueError("wire type %d" % wt)
        out.setdefault(num, []).append((wt, v))
    return out


def one(f, num, default=None):
    vals = f.get(num)
    return vals[-1][1] if vals else default


def decode_event(payload):
    """A dict: wall_time, step, file_version, writer, session_status, graph_def, values[]."""
    f = fields(payload)
    ev = {
        "wall_time": struct.unpack("<d", one(f, 1))[0] if 1 in f else 0.0,
        "step": one(f, 2, 0),
        "file_version": one(f, 3, b"").decode(),
        "graph_def": 4 in f,
        "session_status": None,
        "writer": "",
        "values": [],
        "field_order": [num for num in _field_order(payload)],
    }
    if ev["step"] >= 1 << 63:
        ev["step"] -= 1 << 64
    if 10 in f:
        ev["writer"] = one(fields(one(f, 10)), 1, b"").decode()
    if 7 in f:
        ev["session_status"] = one(fields(one(f, 7)), 1, 0)
    if 5 in f:
        for _, v in fields(one(f, 5)).get(1, []):
            vf = fields(v)
            val = {"tag": one(vf, 1, b"").decode(), "kind": None, "plugin": None, "content": None, "data_class": 0}
            if 2 in vf:
                val["kind"] = "simple"
                val["simple"] = struct.unpack("<f", one(vf, 2))[0]
            if 8 in vf:
                tf_ = fields(one(vf, 8))
                shape = None
                if 2 in tf_:
                    shape = [one(fields(d), 1, 0) for _, d in fields(one(tf_, 2)).get(2, [])]
                val.update(kind="tensor", dtype=one(tf_, 1, 0), shape=shape, content=one(tf_, 4, b""),
                           strings=[s for _, s in tf_.get(8, [])], has_shape=2 in tf_)
                val["tensor_content"] = one(tf_, 4, b"")
            if 9 in vf:
                mf = fields(one(vf, 9))
                val["data_class"] = one(mf, 4, 0)
                if 1 in mf:
                    pf = fields(one(mf, 1))
                    val["plugin"] = one(pf, 1, b"").decode()
                    val["content"] = one(pf, 2)  # None when absent (proto3 leaves out b"")
            ev["values"].append(val)
    return ev


def _field_order(buf):
    i = 0
    while i < len(buf):
        key, i = varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            _, i = varint(buf, i)
        elif wt == 1:
            i += 8
        elif wt == 5:
            i += 4
        else:
            n, i = varint(buf, i)
            i += n
        yield num


def scalar_of(val):
    if val["kind"] == "simple":
        return val["simple"]
    if val["kind"] == "tensor" and val["dtype"] == 1 and not val["shape"] and len(val["tensor_content"]) == 4:
        return struct.unpack("<f", val["tensor_content"])[0]
    return None


def histogram_of(val):
    if val["kind"] != "tensor" or val["dtype"] != 2 or val["shape"] is None or len(val["shape"]) != 2:
        return None
    k = val["shape"][0]
    flat = struct.unpack("<%dd" % (3 * k), val["tensor_content"])
    return [flat[3 * i:3 * i + 3] for i in range(k)]


NAME_RE = re.compile(r"^events\.out\.tfevents\.(\d{10})\.(.+)\.(\d+)\.(\d+)\.v2$")


def event_files(run_dir):
    if not os.path.isdir(run_dir):
        return []
    return sorted(os.path.join(run_dir, n) for n in os.listdir(run_dir) if "tfevents" in n)


def load_run(run_dir, rust=False):
    """{tag: [(step, value)]} as TensorBoard's Python loader (rust=False) or RustBoard holds them."""
    series, seen_start = {}, False
    for path in event_files(run_dir):
        for payload in records(path):
            ev = decode_event(payload)
            if ev["session_status"] == 1 and not rust:
                # plugin_event_accumulator: the run's first START starts the session; later ones purge.
                if seen_start:
                    for tag in series:
                        series[tag] = [p for p in series[tag] if p[0] < ev["step"]]
                seen_start = True
                continue
            for val in ev["values"]:
                v = scalar_of(val)
                if v is None and histogram_of(val) is not None:
                    v = sum(r[2] for r in histogram_of(val))
                pts = series.setdefault(val["tag"], [])
                if rust:
                    pts[:] = [p for p in pts if p[0] < ev["step"]]
                pts.append((ev["step"], v))
    return series


# ---- checks of lockstep's files -----------------------------------------------------------------

# Runs of the sample that must read exactly like reference/ (see TensorBoardSample.Write).
LIKE_REFERENCE = ("resumed", "crashed", "rerun")

HIST_SIZES = {
    "dense/kernel_0/histogram": 12, "dense/bias_0/histogram": 3,
    "batch_normalization/gamma_0/histogram": 3, "batch_normalization/beta_0/histogram": 3,
    "batch_normalization/moving_mean_0/histogram": 3, "batch_normalization/moving_variance_0/histogram": 3,
    "dense_1/kernel_0/histogram": 6, "dense_1/bias_0/histogram": 2,
}


def check_file(path, keras_json):
    name = os.path.basename(path)
    m = NAME_RE.match(name)
    if not check(m is not None, "%s: file name pattern" % path):
        return
    check(int(m.group(3)) > 0, "%s: pid in the name" % path)
    recs = records(path)
    first = decode_event(recs[0])
    check(first["file_version"] == "brain.Event:2", "%s: first record is brain.Event:2" % path)
    check(first["wall_time"] == float(int(m.group(1))), "%s: first wall_time equals the name's seconds" % path)
    check(first["writer"] == "tensorflow.core.util.events_writer", "%s: source_metadata.writer" % path)
    check(first["step"] == 0 and not first["values"], "%s: version record has no step or summary" % path)
    for i, payload in enumerate(recs[1:], 1):
        ev = decode_event(payload)
        where = "%s record %d" % (path, i)
        check(not math.isnan(ev["wall_time"]) and ev["wall_time"] >= first["wall_time"] - 3600, where + ": wall_time")
        check(ev["field_order"] == sorted(ev["field_order"]), where + ": fields in number order (as TF serialises)")
        if ev["session_status"] is not None:
            check(ev["session_status"] == 1 and not ev["values"], where + ": only SessionLog START")
            continue
        check(len(ev["values"]) == 1, where + ": exactly one Summary.Value")
        for val in ev["values"]:
            tag = val["tag"]
            check(val["data_class"] == 0, where + ": data_class unset")
            if tag == "keras":
                check(ev["step"] == 0 and val["dtype"] == 7 and val["has_shape"] and val["shape"] == [],
                      where + ": keras is a DT_STRING scalar at step 0")
                check(val["plugin"] == "graph_keras_model" and val["content"] == b"1", where + ": keras plugin data")
                model = json.loads(val["strings"][0].decode("ascii"))
                check(model == keras_json, where + ": keras JSON")
                check(set(model) == {"class_name", "config", "keras_version", "backend"}, where + ": to_json keys")
            elif tag.endswith("/histogram"):
                rows = histogram_of(val)
                check(val["shape"] == [30, 3] and val["plugin"] == "histograms" and val["content"] is None,
                      where + ": histogram DT_DOUBLE [30,3], plugin histograms")
                if rows:
                    lo, hi = rows[0][0], rows[-1][1]
                    check(all(rows[k][0] == rows[k - 1][1] for k in range(1, 30)), where + ": contiguous edges")
                    check(all(float(r[2]).is_integer() and r[2] >= 0 for r in rows), where + ": integral counts")
                    check(sum(r[2] for r in rows) == HIST_SIZES.get(tag), where + ": counts sum to the weight's size")
                    if hi > lo:
                        width = (hi - lo) / 30
                        check(all(rows[k][0] == lo + k * width for k in range(30)), where + ": edges min + k*(max-min)/30")
            else:
                check(val["dtype"] == 1 and val["has_shape"] and val["shape"] == [] and len(val["tensor_content"]) == 4,
                      where + ": %s is a DT_FLOAT rank-0 tensor of 4 bytes" % tag)
                check(val["plugin"] == "scalars" and val["content"] is None, where + ": plugin scalars, no content")


def expected_fresh():
    """Reference §2.2 for the sample's fresh run: 3 epochs of 5 steps, update_freq 2, histogram_freq 1."""
    train = {"keras": [0], "batch_loss": list(range(2, 16, 2)), "batch_accuracy": list(range(2, 16, 2)),
             "epoch_loss": [0, 1, 2], "epoch_accuracy": [0, 1, 2], "epoch_lr": [0, 1, 2],
             "epoch_learning_rate": [0, 1, 2]}
    for tag in HIST_SIZES:
        train[tag] = [0, 1, 2]
    validation = {"evaluation_loss_vs_iterations": [5, 10, 15], "evaluation_accuracy_vs_iterations": [5, 10, 15],
                  "epoch_loss": [0, 1, 2], "epoch_accuracy": [0, 1, 2]}
    return {"train": train, "validation": validation}


def read_expect(path):
    """{(name, run): {tag: [(step, value)]}} from expect.txt."""
    out = {}
    for line in open(path):
        parts = line.split()
        pts = []
        for p in parts[3:]:
            s, v = p.split(":")
            pts.append((int(s), float(v)))
        out.setdefault((parts[0], parts[1]), {})[parts[2]] = pts
    return out


def close(a, b):
    return a is not None and b is not None and (a == b or abs(a - b) <= 1e-6 * max(1.0, abs(b)))


def same_points(got, want):
    return len(got) == len(want) and all(g[0] == w[0] and close(g[1], w[1]) for g, w in zip(got, want))


def check_sample(sample):
    keras_json = json.load(open(os.path.join(sample, "keras.json")))
    expect = read_expect(os.path.join(sample, "expect.txt"))
    for name in ("fresh", "reference") + LIKE_REFERENCE:
        for run in ("train", "validation"):
            for path in event_files(os.path.join(sample, name, "logs", run)):
                check_file(path, keras_json)
    # The tag set and steps of reference §2.2, and the record order in the validation file.
    want = expected_fresh()
    for run in ("train", "validation"):
        series = load_run(os.path.join(sample, "fresh", "logs", run))
        check({t: [p[0] for p in pts] for t, pts in series.items()} == want[run], "fresh/%s: tags and steps" % run)
        check(same_points(series.get("epoch_loss", []), expect[("fresh", run)]["epoch_loss"]),
              "fresh/%s: epoch_loss values" % run)
        for tag, pts in series.items():
            steps = [p[0] for p in pts]
            check(steps == sorted(set(steps)), "fresh/%s %s: strictly increasing steps" % (run, tag))
    order = [decode_event(p) for p in records(event_files(os.path.join(sample, "fresh", "logs", "validation"))[0])[1:]]
    tags = ["%s@%d" % (e["values"][0]["tag"], e["step"]) for e in order]
    check(tags[:4] == ["evaluation_loss_vs_iterations@5", "evaluation_accuracy_vs_iterations@5", "epoch_loss@0",
                       "epoch_accuracy@0"], "fresh/validation: evaluation_* before epoch_* (%s)" % tags[:4])
    # What lockstep's test computed equals what this reader decodes; the resumed run reads like the
    # uninterrupted one under both loaders' rules.
    for (name, run), tags_ in expect.items():
        got = load_run(os.path.join(sample, name, "logs", run))
        for tag, pts in tags_.items():
            check(same_points(got.get(tag, []), pts), "%s/%s %s: points" % (name, run, tag))
    for name in LIKE_REFERENCE:
        for run in ("train", "validation"):
            want_run = expect[("reference", run)]
            for rust in (False, True):
                got = load_run(os.path.join(sample, name, "logs", run), rust)
                keras = got.pop("keras", [])
                loader = "RustBoard" if rust else "Python loader"
                check(run != "train" or len(keras) == 1, "%s/train (%s): one keras tag" % (name, loader))
                check(set(got) == set(want_run), "%s/%s (%s): tag set" % (name, run, loader))
                for tag, pts in want_run.items():
                    check(same_points(got.get(tag, []), pts), "%s/%s %s (%s): same as uninterrupted" % (name, run, tag, loader))
    files = event_files(os.path.join(sample, "resumed", "logs", "train"))
    check(len(files) == 2, "resumed/train: one file per process")
    if len(files) == 2:
        second = [decode_event(p) for p in records(files[1])]
        check([(e["session_status"], e["step"]) for e in second[1:3]] == [(1, 1), (1, 1)],
              "resumed/train: two SessionLog STARTs at 1 (the first starts the session, the second purges)")
    return expect


def check_fixtures(fixtures):
    want = {
        "tfkeras2.13_mnist_cnn_run3200/train/events.out.tfevents.1713946869.LAPTOP-T6KSEJC7.3200.0.v2": 16,
        "tfkeras2.13_mnist_cnn_run3200/validation/events.out.tfevents.1713946901.LAPTOP-T6KSEJC7.3200.1.v2": 5,
        "tfkeras2.5era_oct_20220105-073757/validation/events.out.tfevents.1641386283.pedram-Z97M-DS3H.26433.3918.v2": 29,
    }
    for rel, n in want.items():
        path = os.path.join(fixtures, rel)
        if not os.path.exists(path):
            print("SKIP fixture (absent):", path)
            continue
        recs = records(path)
        check(len(recs) == n, "%s: %d records" % (rel, n))
        evs = [decode_event(r) for r in recs]
        check(evs[0]["file_version"] == "brain.Event:2", rel + ": version record")
        if n == 5:
            check([(e["values"][0]["tag"], e["step"]) for e in evs[1:]] ==
                  [("evaluation_loss_vs_iterations", 600), ("evaluation_accuracy_vs_iterations", 600),
                   ("epoch_loss", 0), ("epoch_accuracy", 0)], rel + ": tags and steps")
            check(scalar_of(evs[1]["values"][0]) == 0.04139528051018715, rel + ": value")
        if n == 16:
            hist = [e for e in evs if e["values"] and e["values"][0]["tag"].endswith("/histogram")]
            check(len(hist) == 10, rel + ": 10 histograms")
            for e in hist:
                rows = histogram_of(e["values"][0])
                lo, hi = rows[0][0], rows[-1][1]
                check(all(rows[k][0] == lo + k * ((hi - lo) / 30) for k in range(30)),
                      rel + ": TF's edges are min + k*(max-min)/30 (%s)" % e["values"][0]["tag"])
        if n == 29:
            check(evs[3]["values"][0]["kind"] == "simple" and scalar_of(evs[3]["values"][0]) == 1.5368982553482056,
                  rel + ": TF1 simple_value")


# ---- TensorBoard itself ------------------------------------------------------------------------

def tensorboard_python(venv, allow_install):
    """The venv's python with tensorboard importable, or None (with the reason printed)."""
    py = os.path.join(venv, "bin", "python")
    probe = [py, "-c", "import tensorboard, numpy"]
    if os.path.exists(py) and subprocess.run(probe, capture_output=True).returncode == 0:
        return py
    marker = os.path.join(venv + ".pip-failed")
    if os.path.exists(marker) and time.time() - os.path.getmtime(marker) < 86400:
        print("SKIP TensorBoard's loaders: pip install tensorboard failed within the last day (%s; delete it to retry)" % marker)
        return None
    if not allow_install:
        print("SKIP TensorBoard's loaders: no venv at", venv)
        return None
    try:
        if not os.path.exists(py):
            subprocess.run(["/usr/bin/python3", "-m", "venv", venv], check=True, capture_output=True, timeout=120)
        r = subprocess.run([py, "-m", "pip", "install", "--disable-pip-version-check", "--timeout", "15", "--retries", "1",
                            "tensorboard"], capture_output=True, text=True, timeout=420)
        if r.returncode != 0:
            raise RuntimeError(r.stdout[-800:] + r.stderr[-800:])
    except Exception as e:  # noqa: BLE001 - any failure means: no TensorBoard here
        os.makedirs(os.path.dirname(marker) or ".", exist_ok=True)
        open(marker, "w").write(str(e))
        print("SKIP TensorBoard's loaders: cannot install tensorboard with pip (PyPI unreachable?):", str(e)[-300:])
        return None
    return py if subprocess.run(probe, capture_output=True).returncode == 0 else None


ACCUMULATOR_SCRIPT = r"""
import json, sys
from tensorboard.backend.event_processing import plugin_event_accumulator as pea
from tensorboard.util import tensor_util
from tensorboard.plugins.graph import keras_util
out = {}
for run_dir in sys.argv[1:]:
    acc = pea.EventAccumulator(run_dir, size_guidance={"tensors": 0})
    acc.Reload()
    runs = {}
    for tag in acc.Tags()["tensors"]:
        pts = []
        meta = acc.SummaryMetadata(tag)
        for t in acc.Tensors(tag):
            a = tensor_util.make_ndarray(t.tensor_proto)
            if tag == "keras":
                g = keras_util.keras_model_to_graph_def(json.loads(a.item().decode()))
                v = [[n.name, n.attr["keras_class"].s.decode(), list(n.input)] for n in g.node]
            elif a.ndim == 2:
                v = float(a[:, 2].sum())
            else:
                v = float(a)
            pts.append([t.step, v])
        runs[tag] = {"plugin": meta.plugin_data.plugin_name, "data_class": int(meta.data_class), "points": pts}
    out[run_dir] = runs
print(json.dumps(out))
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http_json(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read().decode())


def tensorboard_server(py, logdir, load_fast, expected_runs, timeout=90):
    """{run: {tag: [(step, value)]}} from a running `tensorboard` (scalars and histograms), or None."""
    port = free_port()
    tb = os.path.join(os.path.dirname(py), "tensorboard")
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([tb, "--logdir", logdir, "--port", str(port), "--host", "127.0.0.1",
                             "--load_fast", load_fast, "--reload_interval", "1"], stdout=log, stderr=log)
    base = "http://127.0.0.1:%d" % port
    try:
        deadline = time.time() + timeout
        runs = []
        while time.time() < deadline:
            try:
                runs = http_json(base + "/data/runs")
                if set(expected_runs) <= set(runs):
                    break
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.5)
        if not set(expected_runs) <= set(runs):
            log.seek(0)
            print("tensorboard --load_fast=%s output:\n%s" % (load_fast, log.read().decode(errors="replace")[-2000:]))
            return None
        time.sleep(3)  # let the loader finish reading every file (reload_interval 1 s)
        out = {}
        scalar_tags = http_json(base + "/data/plugin/scalars/tags")
        hist_tags = http_json(base + "/data/plugin/histograms/tags")
        for run in expected_runs:
            out[run] = {}
            for tag in scalar_tags.get(run, {}):
                q = urllib.parse.urlencode({"run": run, "tag": tag})
                out[run][tag] = [(int(s), float(v)) for _, s, v in http_json(base + "/data/plugin/scalars/scalars?" + q)]
            for tag in hist_tags.get(run, {}):
                q = urllib.parse.urlencode({"run": run, "tag": tag})
                out[run][tag] = [(int(s), float(sum(b[2] for b in h))) for _, s, h in
                                 http_json(base + "/data/plugin/histograms/histograms?" + q)]
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def check_with_tensorboard(py, sample, expect):
    runs = {}
    for name in ("fresh", "reference") + LIKE_REFERENCE:
        for run in ("train", "validation"):
            runs[os.path.join(sample, name, "logs", run)] = (name, run)
    r = subprocess.run([py, "-c", ACCUMULATOR_SCRIPT] + list(runs), capture_output=True, text=True, timeout=300)
    if not check(r.returncode == 0, "EventAccumulator ran: " + r.stderr[-1500:]):
        return
    got = json.loads(r.stdout)
    for run_dir, (name, run) in runs.items():
        key = ("reference" if name in LIKE_REFERENCE else name, run)
        want = expect[key]
        tags = got[run_dir]
        check(set(tags) - {"keras"} == set(want), "EventAccumulator %s/%s: tag set %s" % (name, run, sorted(tags)))
        for tag, pts in want.items():
            have = [(s, v) for s, v in tags.get(tag, {}).get("points", [])]
            check(same_points(have, pts), "EventAccumulator %s/%s %s: %s vs %s" % (name, run, tag, have[:6], pts[:6]))
            plugin = "histograms" if tag.endswith("/histogram") else "scalars"
            check(tags.get(tag, {}).get("plugin") == plugin, "EventAccumulator %s/%s %s: plugin" % (name, run, tag))
        if run == "train":
            keras = tags.get("keras", {}).get("points", [])
            check(len(keras) == 1, "EventAccumulator %s/train: one keras graph (%d)" % (name, len(keras)))
            if keras:
                nodes = keras[0][1]
                names = ["sequential/dense_input", "sequential/dense", "sequential/batch_normalization", "sequential/dense_1"]
                check([n[0] for n in nodes] == names and [n[1] for n in nodes] == ["InputLayer", "Dense", "BatchNormalization", "Dense"]
                      and [n[2] for n in nodes] == [[]] + [[x] for x in names[:-1]],
                      "graph plugin: the Sequential chain input -> dense -> batch_normalization -> dense_1 (%s)" % nodes)
    for load_fast in ("false", "true"):
        names = {os.path.relpath(d, sample): key for d, key in runs.items()}
        served = tensorboard_server(py, sample, load_fast, list(names))
        if served is None:
            if load_fast == "true":
                print("SKIP RustBoard (tensorboard --load_fast=true did not serve the runs; its data server may be "
                      "unavailable on this platform)")
                continue
            check(False, "tensorboard --load_fast=false served the runs")
            continue
        for run_name, (name, run) in names.items():
            want = expect[("reference" if name in LIKE_REFERENCE else name, run)]
            for tag, pts in want.items():
                have = served.get(run_name, {}).get(tag, [])
                check(same_points(have, pts), "tensorboard --load_fast=%s %s %s: %s vs %s" % (load_fast, run_name, tag, have[:6], pts[:6]))
        print("tensorboard --load_fast=%s: %d runs checked" % (load_fast, len(names)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--core-tests", required=True, help="the core_tests executable")
    ap.add_argument("--venv", help="where to keep a venv with tensorboard (created if pip works)")
    ap.add_argument("--fixtures", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../shared/datasets/tfevents"))
    ap.add_argument("--no-install", action="store_true", help="use the venv only if it exists")
    ap.add_argument("--keep", action="store_true", help="keep the sample directory")
    args = ap.parse_args()

    print("CRC-32C self-check:", hex(crc32c(b"123456789")))
    check(crc32c(b"123456789") == 0xE3069283 and masked(crc32c(b"\x1a\x11CRC test, one two")) == 0x5794D08A,
          "the checker's own CRC-32C")
    sample = tempfile.mkdtemp(prefix="lockstep-tb-sample-")
    try:
        env = dict(os.environ, LOCKSTEP_TB_SAMPLE_DIR=sample, OMP_WAIT_POLICY="PASSIVE")
        r = subprocess.run([args.core_tests, "--gtest_filter=TensorBoardSample.Write"], env=env, capture_output=True, text=True)
        if not check(r.returncode == 0 and os.path.exists(os.path.join(sample, "expect.txt")),
                     "core_tests wrote the sample logs: " + r.stdout[-1000:] + r.stderr[-1000:]):
            return 1
        expect = check_sample(sample)
        print("standard-library decoder: lockstep's files checked")
        check_fixtures(os.path.normpath(args.fixtures))
        print("standard-library decoder: fixtures checked")
        if args.venv:
            py = tensorboard_python(os.path.abspath(args.venv), not args.no_install)
            if py:
                check_with_tensorboard(py, sample, expect)
        else:
            print("SKIP TensorBoard's loaders: no --venv given")
    finally:
        if args.keep:
            print("sample kept in", sample)
        else:
            shutil.rmtree(sample, ignore_errors=True)
    if FAILURES:
        print("%d check(s) failed" % len(FAILURES))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
