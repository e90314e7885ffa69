#!/usr/bin/python3
"""Independent structural check of lockstep's Keras .h5 export with Debian's python3-h5py
(../shared/reference/keras-files.md §5.2, §7.1): string types of every attribute, 1-D layer_names,
weight order and paths, model_config keys, training_config, optimizer_weights."""
import argparse, json, os, subprocess, sys, tempfile

try:
    import h5py, numpy as np
except ImportError:
    print("SKIP: python3-h5py is not installed"); sys.exit(0)

ap = argparse.ArgumentParser()
ap.add_argument("--keras-tests", required=True)
a = ap.parse_args()
errors = []
def check(cond, msg):
    if not cond: errors.append(msg)

def strtype(obj, name):
    t = obj.attrs.get_id(name).get_type()
    return (isinstance(t, h5py.h5t.TypeStringID), t.is_variable_str() if isinstance(t, h5py.h5t.TypeStringID) else None,
            t.get_cset() if isinstance(t, h5py.h5t.TypeStringID) else None, obj.attrs.get_id(name).shape)

with tempfile.TemporaryDirectory() as d:
    env = dict(os.environ, LOCKSTEP_KERAS_SAMPLE_DIR=d)
    subprocess.run([a.keras_tests, "--gtest_filter=KerasExport.WriteSample"], env=env, check=True, stdout=subprocess.DEVNULL)
    for kind in ("sequential", "functional"):
        p = os.path.join(d, kind + ".h5")
        with h5py.File(p, "r") as f:
            check(strtype(f, "keras_version") == (True, True, h5py.h5t.CSET_UTF8, ()), f"{kind}: root keras_version {strtype(f, 'keras_version')}")
            check(strtype(f, "backend") == (True, True, h5py.h5t.CSET_UTF8, ()), f"{kind}: root backend")
            for n in ("model_config", "training_config"):
                check(strtype(f, n) == (True, True, h5py.h5t.CSET_ASCII, ()), f"{kind}: {n} {strtype(f, n)}")
            mc = json.loads(f.attrs["model_config"])
            check(mc["class_name"] == ("Sequential" if kind == "sequential" else "Functional"), f"{kind}: class_name")
            cfg = mc["config"]
            want = {"name", "layers"} if kind == "sequential" else {"name", "trainable", "layers", "input_layers", "output_layers"}
            check(set(cfg) == want, f"{kind}: config keys {set(cfg)}")
            if kind == "sequential":
                check(cfg["layers"][0]["class_name"] == "InputLayer", "sequential: InputLayer first")
                check("batch_input_shape" not in cfg["layers"][1]["config"], "sequential: batch_input_shape repeated")
            tc = json.loads(f.attrs["training_config"])
            check("loss_weights" in tc and "optimizer_config" in tc, "training_config keys")
            check(tc["optimizer_config"]["class_name"] == "Nadam", "optimizer class")
            mw = f["model_weights"]
            ln = mw.attrs["layer_names"]
            check(ln.ndim == 1, f"{kind}: layer_names is not 1-D")
            check(strtype(mw, "layer_names")[:3] == (True, False, h5py.h5t.CSET_ASCII), f"{kind}: layer_names type")
            for n in ("backend", "keras_version"):
                check(strtype(mw, n) == (True, True, h5py.h5t.CSET_ASCII, ()), f"{kind}: model_weights/{n}")
            names = [x.decode() for x in ln]
            layer_cfg = [l["config"]["name"] for l in cfg["layers"] if kind == "functional" or l["class_name"] != "InputLayer"]
            check(names == layer_cfg, f"{kind}: layer_names {names} != config order {layer_cfg}")
            for n in names:
                g = mw[n]
                wn = g.attrs["weight_names"]
                if len(wn) == 0:
                    check(wn.dtype == np.float64, f"{kind}: {n} empty weight_names not float64")
                    continue
                wn = [x.decode() for x in wn]
                for w in wn:
                    check(w.startswith(n + "/") and w.endswith(":0"), f"{kind}: weight name {w}")
                    ds = g[w]
                    check(ds.dtype == np.float32 and ds.chunks is None and not ds.compression, f"{kind}: dataset {w}")
                short = [w.split("/")[-1] for w in wn]
                if "moving_mean:0" in short:
                    check(short == ["gamma:0", "beta:0", "moving_mean:0", "moving_variance:0"], f"{kind}: BN order {short}")
                if "kernel:0" in short:
                    check(short[0] == "kernel:0", f"{kind}: Dense order {short}")
                    check(g[wn[0]].ndim == 2, f"{kind}: kernel rank")
            ow = f["optimizer_weights"]
            on = [x.decode() for x in ow.attrs["weight_names"]]
            check(on[0] == "Nadam/iter:0" and ow[on[0]].dtype == np.int64 and ow[on[0]].shape == () and ow[on[0]][()] == 7,
                  f"{kind}: iter {on[:1]}")
            check(on[1] == "Nadam/momentum_cache:0", f"{kind}: momentum_cache second")
if errors:
    print("\n".join(errors)); sys.exit(1)
print("OK: exported files follow the §5.2 profile")
