"""Keras files with the real libraries (label `keras`; docs/keras.md, ../shared/reference/keras-files.md §7.2).

Run with the python of tests/keras/keras_venv.sh (tensorflow-cpu, tf_keras = tf.keras 2.x, Keras 3, h5py):

    py=$(bash tests/keras/keras_venv.sh BUILD/keras-venv) && $py tests/keras/keras_roundtrip.py --lockstep BUILD/launch/lockstep

(a) lockstep -> .h5 -> Keras: a Sequential model with every layer kind lockstep has, and a Functional one
    (two inputs, a shared layer, every merge, two outputs), trained a few steps by `lockstep train`, are
    predicted by `lockstep predict`, exported by `lockstep export`, loaded by tf_keras and by Keras 3:
    their predictions equal lockstep's within 1e-5, and neither loader warns about the file (Keras 3's
    documented exceptions: LeakyReLU's `alpha` and the TF 2.x optimizer state, docs/keras.md).
(b) Keras -> lockstep: Sequential and Functional models built, trained one epoch and saved by tf_keras:
    `lockstep summary` totals equal count_params(); `lockstep predict` on `model: {from_keras: FILE.h5}`
    (and on model.to_json() + save_weights()) equals Keras's predictions within 1e-5.
(c) The chapter's "Reusing Pretrained Layers": model A built, trained and saved by tf_keras
    (model.save("my_model_A.h5")); a lockstep run file for task B takes its hidden layers with
    `transfer: {from: my_model_A.h5, ...}`; they equal Keras's weights bit for bit while frozen and move
    after; `lockstep evaluate --checkpoint my_model_A.h5` equals Keras's model.evaluate.
(d) CNNs both ways: a Sequential CNN and a Functional residual block (conv2d, depthwise_conv2d, BN, pooling,
    add, zero_padding2d, spatial_dropout2d, global pooling) trained by lockstep, exported, loaded by tf_keras
    and Keras 3 (the checks of (a)); CNNs saved by tf_keras and by Keras 3 imported with from_keras (the
    checks of (b)).

Data: small learnable Fashion-MNIST-like IDX files generated here (10 classes of 28x28 uint8 images: a
prototype per class plus noise), converted with `lockstep data convert`. Functional models train on image
pairs (data.pairs); their test split holds two images per class and same_fraction 1, so the pair of row p
is (a, the other image of a's class) with a drawn at random: each lockstep row is matched to the nearest of
Keras's predictions for the 20 possible pairs (and must be within 1e-5 of it).
Prints one line per check and a final "N passed, M failed"; exit 1 on any failure.
"""
import argparse
import contextlib
import io
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter; Python warnings are kept
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import h5py  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--lockstep", required=True, help="the lockstep binary")
ap.add_argument("--workdir", help="keep the files here (default: a temporary folder, removed)")
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
LOCKSTEP = os.path.abspath(args.lockstep)
T0 = time.time()

results = []  # (ok, name, detail)


def check(name, ok, detail=""):
    results.append((bool(ok), name, detail))
    print(f"{'PASS' if ok else 'FAIL'}: {name}{(' (' + detail + ')') if detail else ''}", flush=True)
    return ok


def lockstep(*argv, expect=0):
    cmd = [LOCKSTEP, *map(str, argv)]
    if argv[0] in ("train", "predict", "evaluate", "summary"):
        cmd += ["--threads", str(args.threads)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != expect:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return p.stdout + p.stderr


def write_yaml(path, obj):
    # JSON is YAML (flow style); yaml-cpp reads it.
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
    return path


# ---- data -------------------------------------------------------------------------------------------

def make_idx(folder, n_train, test_labels, seed):
    """Fashion-MNIST-like IDX files: class c = prototype c (smooth random blobs) + noise, uint8 28x28."""
    rng = np.random.default_rng(seed)
    protos = []
    for c in range(10):
        low = rng.uniform(0, 255, size=(7, 7))
        protos.append(np.kron(low, np.ones((4, 4))))
    protos = np.stack(protos)

    def images(labels):
        x = 0.75 * protos[labels] + 0.25 * rng.uniform(0, 255, size=(len(labels), 28, 28))
        return np.clip(x, 0, 255).astype(np.uint8)

    os.makedirs(folder, exist_ok=True)
    y_train = np.arange(n_train) % 10
    rng.shuffle(y_train)
    for prefix, y in (("train", y_train), ("t10k", np.asarray(test_labels))):
        x = images(y)
        with open(os.path.join(folder, f"{prefix}-images-idx3-ubyte"), "wb") as f:
            f.write(struct.pack(">IIII", 0x803, len(y), 28, 28))
            f.write(x.tobytes())
        with open(os.path.join(folder, f"{prefix}-labels-idx1-ubyte"), "wb") as f:
            f.write(struct.pack(">II", 0x801, len(y)))
            f.write(y.astype(np.uint8).tobytes())


def make_dataset(work, name, n_train, test_labels, seed):
    src = os.path.join(work, "src-" + name)
    make_idx(src, n_train, test_labels, seed)
    out = os.path.join(work, name + ".h5")
    lockstep("data", "convert", "--format", "fashion-mnist", "--src", src, "--out", out)
    with h5py.File(out, "r") as f:
        x_train, y_train = f["train/x"][()], f["train/y"][()].astype(np.int64)
        x_test, y_test = f["test/x"][()], f["test/y"][()].astype(np.int64)
    if x_train.ndim == 4:
        x_train, x_test = x_train[..., 0], x_test[..., 0]
    sc = lambda x: x.astype(np.float32) / np.float32(255)  # data.scale: 255
    return out, sc(x_train), y_train, sc(x_test), y_test


# ---- loading with warnings captured ------------------------------------------------------------------

class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(f"{record.name}: {record.getMessage()}")


@contextlib.contextmanager
def capture():
    """Python warnings, WARNING+ log records (absl, tensorflow, keras, root) and anything printed."""
    h = _Collect()
    loggers = [logging.getLogger(n) for n in ("", "absl", "tensorflow", "keras", "tf_keras", "h5py")]
    for lg in loggers:
        lg.addHandler(h)
    out, err = io.StringIO(), io.StringIO()
    box = {"messages": None}
    try:
        with warnings.catch_warnings(record=True) as w, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            warnings.simplefilter("always")
            yield box
    finally:
        for lg in loggers:
            lg.removeHandler(h)
    msgs = list(dict.fromkeys(h.messages))
    msgs += [f"warning {x.category.__name__}: {x.message}" for x in w]
    msgs += [f"printed: {s}" for s in (out.getvalue() + err.getvalue()).splitlines() if s.strip()]
    box["messages"] = msgs


def keras3_loadable(path):
    """Keras 3 cannot load tf_keras's own file of some CNN layers: its DepthwiseConv2D refuses `groups` and its
    SpatialDropout2D refuses `trainable` and `noise_shape`, keys tf_keras writes (lockstep writes neither).
    Remove them from tf_keras's file so that it can serve as Keras 3's baseline."""
    drop = {"DepthwiseConv2D": ("groups",), "SpatialDropout2D": ("trainable", "noise_shape")}
    with h5py.File(path, "r+") as f:
        mc = json.loads(f.attrs["model_config"])
        changed = False
        for layer in mc["config"]["layers"]:
            for k in drop.get(layer["class_name"], ()):
                if k in layer["config"]:
                    del layer["config"][k]
                    changed = True
        if changed:
            f.attrs["model_config"] = json.dumps(mc)


def load_both(path, what):
    """(tf_keras model, Keras 3 model), checking that neither warns about the file.

    tf_keras must say nothing. Keras 3 says some things about every legacy .h5 (e.g. "Compiled the loaded
    model, but the compiled metrics have yet to be built", or its failure to restore TF 2.x optimizer
    state): what it says about lockstep's file must be what it says about tf_keras's own file of the same
    model (tf_keras's model.save() of the model it loaded), nothing more."""
    with capture() as box:
        mt = tf_keras.models.load_model(path)
    check(f"{what}: tf_keras loads it without warnings", not box["messages"], "; ".join(box["messages"])[:600])
    ref = path[:-3] + ".tf_keras_resave.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "You are saving your model as an HDF5 file ... legacy"
        mt.save(ref)
    keras3_loadable(ref)
    with capture() as box:
        m3_ref = keras.saving.load_model(ref)
    baseline = box["messages"]
    with capture() as box:
        m3 = keras.saving.load_model(path)
    extra = [m for m in box["messages"] if m not in baseline]
    check(f"{what}: Keras 3 loads it without warnings about the file", not extra,
          "; ".join(extra)[:600] or (f"as for tf_keras's own file: {'; '.join(box['messages'])}"[:400] if box["messages"] else ""))
    # What Keras 3 makes of the TF 2.x optimizer state (docs/keras.md): the same as of tf_keras's own file.
    state = lambda m: (int(m.optimizer.iterations.numpy()), float(np.asarray(m.optimizer.learning_rate)))
    check(f"{what}: Keras 3's optimizer (iterations, learning_rate) as from tf_keras's own file", state(m3) == state(m3_ref),
          f"{state(m3)} vs {state(m3_ref)}")
    return mt, m3


def check_optimizer_state(path, mt, steps, what):
    """tf_keras's restored optimizer: iterations, and every slot bit for bit, by name and position."""
    check(f"{what}: tf_keras restores optimizer.iterations", int(mt.optimizer.iterations.numpy()) == steps,
          f"{int(mt.optimizer.iterations.numpy())} vs {steps} steps")
    with h5py.File(path, "r") as f:
        names = [n.decode() for n in f["optimizer_weights"].attrs["weight_names"]]
        values = [f["optimizer_weights"][n][()] for n in names]
    kv = mt.optimizer.weights
    # tf_keras names its variables without the "<Opt>/" scope the file has: iter:0, dense/kernel/m:0.
    agree = lambda v, n, x: n.split("/", 1)[1] == v.name and np.array_equal(np.asarray(v), x)
    same = len(kv) == len(values) and all(agree(v, n, x) for v, n, x in zip(kv, names, values))
    check(f"{what}: tf_keras restores every optimizer slot bit for bit, by name and position ({type(mt.optimizer).__name__})",
          same, f"{len(kv)} tensors in tf_keras, {len(values)} in the file"
          + ("" if same or len(kv) != len(values) else
             f"; first difference: {next((v.name, n) for v, n, x in zip(kv, names, values) if not agree(v, n, x))}"))


def as_list(y):
    return y if isinstance(y, (list, tuple)) else [y]


def keras_predict(model, x):
    ys = model(x, training=False)
    return [np.asarray(y) for y in as_list(ys)]


def lockstep_predict(run, checkpoint, out):
    lockstep("predict", run, "--checkpoint", checkpoint, "--out", out)
    with h5py.File(out, "r") as f:
        return f["probabilities"][()]


def pair_match(lock_rows, candidates):
    """Max over rows of the distance to the nearest candidate row (pairs drawn at random: see the docstring)."""
    d = np.abs(lock_rows[:, None, :] - candidates[None, :, :]).max(axis=2)
    best = d.min(axis=1)
    return float(best.max()), d.argmin(axis=1)


def partner_pairs(x_test, y_test):
    """(a, b) for each test image a: b = the other test image of a's class (two per class)."""
    idx_b = np.array([[j for j in range(len(y_test)) if y_test[j] == y_test[i] and j != i][0] for i in range(len(y_test))])
    return [x_test, x_test[idx_b]]


def lockstep_weights(path):
    """{layer: {weight: array}} of a lockstep checkpoint or Keras .h5 (model_weights group)."""
    out = {}
    with h5py.File(path, "r") as f:
        mw = f["model_weights"]
        for ln in mw.attrs["layer_names"]:
            ln = ln.decode() if isinstance(ln, bytes) else ln
            g = mw[ln]
            wn = g.attrs["weight_names"]
            out[ln] = {}
            for n in wn:
                n = n.decode() if isinstance(n, bytes) else n
                out[ln][n.split("/")[-1].split(":")[0]] = g[n][()]
    return out


def lockstep_layer_names(path):
    with h5py.File(path, "r") as f:
        return [n.decode() if isinstance(n, bytes) else n for n in f["model_weights"].attrs["layer_names"]]


def total_params(summary_text):
    m = re.search(r"Total params: ([\d,]+)", summary_text)
    return int(m.group(1).replace(",", "")) if m else None


TOL = 1e-5

# ---- the libraries ------------------------------------------------------------------------------------
t_import = time.time()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import tensorflow as tf  # noqa: E402
    import tf_keras  # noqa: E402
    import keras  # noqa: E402
tf.get_logger().setLevel("WARNING")
print(f"tensorflow {tf.__version__}, tf_keras {tf_keras.__version__}, keras {keras.__version__}, "
      f"h5py {h5py.__version__} (imported in {time.time() - t_import:.1f} s)", flush=True)
tf.config.threading.set_intra_op_parallelism_threads(args.threads)
tf.config.threading.set_inter_op_parallelism_threads(args.threads)

work = args.workdir or tempfile.mkdtemp(prefix="lockstep-keras-")
os.makedirs(work, exist_ok=True)
try:
    # Single images: 600 training, 200 test images. Pairs: 20 test images, two per class.
    seq_data, xs_train, ys_train, xs_test, ys_test = make_dataset(work, "single", 600, np.arange(200) % 10, seed=1)
    pair_data, xp_train, yp_train, xp_test, yp_test = make_dataset(work, "pairs", 600, np.arange(20) // 2, seed=2)
    pair_inputs = partner_pairs(xp_test, yp_test)
    print(f"data ready ({time.time() - T0:.1f} s)", flush=True)

    # ============================ (a) lockstep -> Keras ============================================
    t_a = time.time()
    seq_run = {
        "name": "kr_sequential", "seed": 7,
        "data": {"path": seq_data, "validation": {"first": 100}, "scale": 255, "limit": 192},
        "model": {"name": "every_layer", "input_shape": [28, 28], "layers": [
            {"reshape": {"target_shape": [14, 56]}},
            {"dense": {"units": 16, "activation": "tanh", "kernel_initializer": "he_normal",
                       "kernel_regularizer": {"l2": 1e-4}}},
            {"flatten": {}},
            {"batch_normalization": {"momentum": 0.9}},
            {"dense": {"units": 64, "activation": "selu", "kernel_initializer": "lecun_normal",
                       "bias_initializer": {"constant": {"value": 0.1}}, "kernel_constraint": {"max_norm": 2.0}}},
            {"alpha_dropout": {"rate": 0.1}},
            {"dense": {"units": 48, "activation": "elu",
                       "kernel_initializer": {"variance_scaling": {"scale": 2.0, "mode": "fan_avg", "distribution": "uniform"}},
                       "kernel_regularizer": {"l1_l2": {"l1": 1e-5, "l2": 1e-4}}, "bias_regularizer": {"l1": 1e-5}}},
            {"dropout": {"rate": 0.2}},
            {"dense": {"units": 40, "use_bias": False, "kernel_initializer": "glorot_normal",
                       "kernel_constraint": {"max_norm": {"max_value": 3.0, "axis": 0}}}},
            {"leaky_relu": {"alpha": 0.2}},
            {"dense": {"units": 32, "activation": "sigmoid", "kernel_initializer": "he_uniform"}},
            {"elu": {"alpha": 0.7}},
            {"dense": {"units": 32, "activation": "softplus", "kernel_initializer": "random_normal"}},
            {"prelu": {"alpha_initializer": {"constant": {"value": 0.25}}}},
            {"dense": {"units": 32, "activation": "swish", "kernel_initializer": "truncated_normal",
                       "name": "frozen_dense", "trainable": False}},
            {"relu": {}},
            {"dense": {"units": 24, "activation": "softsign", "kernel_initializer": "random_uniform"}},
            {"activation": {"activation": "tanh"}},
            {"dense": {"units": 24, "activation": "leaky_relu", "kernel_initializer": "lecun_uniform"}},
            {"dense": {"units": 24, "activation": "relu", "kernel_initializer": "glorot_uniform"}},
            {"batch_normalization": {"center": False, "epsilon": 0.01}},
            {"dense": {"units": 10}},
            {"softmax": {}},
        ]},
        "loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"],
        "optimizer": {"name": "nadam", "learning_rate": 0.002},
        "train": {"epochs": 1, "batch_size": 32, "verbose": 0},
    }
    seq_yaml = write_yaml(os.path.join(work, "sequential.yaml"), seq_run)
    lockstep("train", seq_yaml, "--run-dir", os.path.join(work, "runs/sequential"))
    seq_ckpt = os.path.join(work, "runs/sequential/final.h5")
    p_seq = lockstep_predict(seq_yaml, seq_ckpt, os.path.join(work, "sequential.pred.h5"))
    seq_h5 = os.path.join(work, "sequential_export.h5")
    lockstep("export", seq_ckpt, "--out", seq_h5)
    mt, m3 = load_both(seq_h5, "(a) Sequential export")
    check_optimizer_state(seq_h5, mt, 192 // 32, "(a) Sequential")
    n_params = sum(int(np.prod(w.shape)) for ws in lockstep_weights(seq_ckpt).values() for w in ws.values())
    for lib, m in (("tf_keras", mt), ("Keras 3", m3)):
        check(f"(a) Sequential: {lib} count_params equals lockstep's", m.count_params() == n_params,
              f"{m.count_params()} vs {n_params}")
        d = float(np.abs(keras_predict(m, xs_test)[0] - p_seq).max())
        check(f"(a) Sequential: {lib} predictions equal lockstep's", d <= TOL, f"max |diff| {d:.2e} over {p_seq.shape}")

    fun_model = {
        "name": "two_heads",
        "inputs": [{"input": {"name": "image_a", "shape": [28, 28]}}, {"input": {"name": "image_b", "shape": [28, 28]}}],
        "layers": [
            {"flatten": {"name": "flatten_a"}, "inputs": "image_a"},
            {"flatten": {"name": "flatten_b"}, "inputs": "image_b"},
            {"dense": {"name": "shared", "units": 24, "activation": "tanh"}, "inputs": "flatten_a"},
            {"call": "shared", "inputs": "flatten_b"},
            {"concatenate": {"name": "concat", "axis": -1}, "inputs": ["shared", "shared[1]"]},
            {"dense": {"name": "mix", "units": 24, "activation": "elu"}},
            {"add": {"name": "sum"}, "inputs": ["shared", "shared[1]", "mix"]},
            {"subtract": {"name": "diff"}, "inputs": ["shared", "shared[1]"]},
            {"multiply": {"name": "prod"}, "inputs": ["shared", "shared[1]"]},
            {"average": {"name": "mean"}, "inputs": ["shared", "shared[1]", "mix"]},
            {"maximum": {"name": "max"}, "inputs": ["shared", "shared[1]"]},
            {"minimum": {"name": "min"}, "inputs": ["mix", "shared[1]"]},
            {"concatenate": {"name": "all_merges", "axis": 1}, "inputs": ["sum", "diff", "prod", "mean", "max", "min"]},
            {"batch_normalization": {"name": "bn"}},
            {"dropout": {"name": "drop", "rate": 0.1}},
            {"dense": {"name": "main", "units": 3, "activation": "softmax"}},
            {"reshape": {"name": "diff_2d", "target_shape": [4, 6]}, "inputs": "diff"},
            {"dense": {"name": "aux_hidden", "units": 5, "activation": "relu"}},
            {"flatten": {"name": "aux_flat"}},
            {"dense": {"name": "aux", "units": 1, "activation": "sigmoid"}},
        ],
        "outputs": ["main", "aux"],
    }
    fun_run = {
        "name": "kr_functional", "seed": 11,
        "data": {"path": pair_data, "validation": {"first": 100}, "scale": 255, "limit": 160,
                 "pairs": {"same_fraction": 1.0}},
        "model": fun_model,
        "loss": {"main": "sparse_categorical_crossentropy", "aux": "binary_crossentropy"},
        "loss_weights": {"main": 1.0, "aux": 0.5},
        "metrics": {"main": ["accuracy"]},
        "optimizer": {"name": "adam", "learning_rate": 0.003},
        "train": {"epochs": 1, "batch_size": 32, "verbose": 0},
    }
    fun_yaml = write_yaml(os.path.join(work, "functional.yaml"), fun_run)
    lockstep("train", fun_yaml, "--run-dir", os.path.join(work, "runs/functional"))
    fun_ckpt = os.path.join(work, "runs/functional/final.h5")
    p_main = lockstep_predict(fun_yaml, fun_ckpt, os.path.join(work, "functional.main.h5"))
    # `predict` writes the first output: the same model with its outputs swapped, weights from the export.
    fun_h5 = os.path.join(work, "functional_export.h5")
    lockstep("export", fun_ckpt, "--out", fun_h5)
    swapped = dict(fun_run, model=dict(fun_model, outputs=["aux", "main"]))
    swapped_yaml = write_yaml(os.path.join(work, "functional_swapped.yaml"), swapped)
    p_aux = lockstep_predict(swapped_yaml, fun_h5, os.path.join(work, "functional.aux.h5"))
    mt, m3 = load_both(fun_h5, "(a) Functional export")
    check_optimizer_state(fun_h5, mt, 160 // 32, "(a) Functional")
    n_params = sum(int(np.prod(w.shape)) for ws in lockstep_weights(fun_ckpt).values() for w in ws.values())
    for lib, m in (("tf_keras", mt), ("Keras 3", m3)):
        check(f"(a) Functional: {lib} count_params equals lockstep's", m.count_params() == n_params,
              f"{m.count_params()} vs {n_params}")
        check(f"(a) Functional: {lib} has lockstep's layers, in lockstep's order",
              [l.name for l in m.layers] == lockstep_layer_names(fun_ckpt))
        ym, ya = keras_predict(m, pair_inputs)
        d1, rows1 = pair_match(p_main, ym)
        d2, rows2 = pair_match(p_aux, ya)
        check(f"(a) Functional: {lib} predictions equal lockstep's (output main)", d1 <= TOL, f"max |diff| {d1:.2e} over {p_main.shape}")
        check(f"(a) Functional: {lib} predictions equal lockstep's (output aux)", d2 <= TOL, f"max |diff| {d2:.2e} over {p_aux.shape}")
    print(f"(a) done in {time.time() - t_a:.1f} s", flush=True)

    # ============================ (b) Keras -> lockstep ============================================
    t_b = time.time()
    tf_keras.utils.set_random_seed(3)
    K = tf_keras
    reg = K.regularizers.l2(1e-4)
    kseq = K.Sequential([
        K.layers.Flatten(input_shape=[28, 28]),
        K.layers.Dense(64, activation="relu", kernel_initializer="he_normal", kernel_regularizer=reg),
        K.layers.BatchNormalization(),
        K.layers.Dropout(0.2),
        K.layers.Dense(32, kernel_constraint=K.constraints.max_norm(1.5)),
        K.layers.LeakyReLU(alpha=0.2),
        K.layers.Dense(32, activation="selu", kernel_initializer="lecun_normal"),
        K.layers.AlphaDropout(0.1),
        K.layers.PReLU(),
        K.layers.Dense(16, activation="elu"),
        K.layers.ELU(alpha=0.5),
        K.layers.Activation("sigmoid"),
        K.layers.Dense(10, activation="softmax"),
    ], name="keras_sequential")
    kseq.compile(loss="sparse_categorical_crossentropy", optimizer=K.optimizers.SGD(learning_rate=0.01, momentum=0.9),
                 metrics=["accuracy"])
    kseq.fit(xs_train[:256], ys_train[:256], epochs=1, batch_size=32, verbose=0)
    kseq_h5 = os.path.join(work, "keras_sequential.h5")
    kseq.save(kseq_h5)
    with open(os.path.join(work, "keras_sequential.json"), "w") as f:
        f.write(kseq.to_json())
    kseq.save_weights(os.path.join(work, "keras_sequential_weights.h5"))
    y_kseq = keras_predict(kseq, xs_test)[0]

    a = K.Input(shape=(28, 28), name="left")
    b = K.Input(shape=(28, 28), name="right")
    fa, fb = K.layers.Flatten()(a), K.layers.Flatten()(b)
    shared = K.layers.Dense(20, activation="relu", name="shared_dense")
    ha, hb = shared(fa), shared(fb)
    cat = K.layers.Concatenate()([ha, hb])
    h = K.layers.Dense(20, activation="tanh")(cat)
    s = K.layers.Add()([h, ha])
    s = K.layers.BatchNormalization()(s)
    d = K.layers.Subtract()([ha, hb])
    m = K.layers.Multiply()([ha, hb])
    mx = K.layers.Maximum()([d, m, s])
    av = K.layers.Average()([mx, K.layers.Minimum()([d, s])])
    out1 = K.layers.Dense(4, activation="softmax", name="class_out")(av)
    out2 = K.layers.Dense(1, activation="sigmoid", name="same_out")(K.layers.Dropout(0.1)(s))
    kfun = K.Model(inputs=[a, b], outputs=[out1, out2], name="keras_functional")
    kfun.compile(loss=["sparse_categorical_crossentropy", "binary_crossentropy"], optimizer="adam")
    ia = np.arange(256) % len(xp_train)
    ib = (ia * 7 + 3) % len(xp_train)
    yb = (yp_train[ia] == yp_train[ib]).astype(np.float32)
    kfun.fit([xp_train[ia], xp_train[ib]], [yp_train[ia] % 4, yb], epochs=1, batch_size=32, verbose=0)
    kfun_h5 = os.path.join(work, "keras_functional.h5")
    kfun.save(kfun_h5)
    kfun.save_weights(os.path.join(work, "keras_functional_weights.h5"))
    y_kfun = keras_predict(kfun, pair_inputs)

    for what, path, model in (("Sequential", kseq_h5, kseq), ("Functional", kfun_h5, kfun)):
        n = total_params(lockstep("summary", path))
        check(f"(b) Keras {what}: lockstep summary total equals count_params", n == model.count_params(),
              f"{n} vs {model.count_params()}")

    def predict_from_keras(name, data, model_node, checkpoint):
        run = {"name": name, "seed": 1, "data": {"path": data, "scale": 255}, "model": model_node,
               "loss": "sparse_categorical_crossentropy", "optimizer": "sgd"}
        if data == pair_data:
            run["data"]["pairs"] = {"same_fraction": 1.0}
            run["loss"] = {"class_out": "sparse_categorical_crossentropy", "same_out": "binary_crossentropy"}
        y = write_yaml(os.path.join(work, name + ".yaml"), run)
        return lockstep_predict(y, checkpoint, os.path.join(work, name + ".pred.h5"))

    p = predict_from_keras("from_keras_seq", seq_data, {"from_keras": kseq_h5}, kseq_h5)
    dd = float(np.abs(p - y_kseq).max())
    check("(b) Keras Sequential: lockstep predict (model: {from_keras: FILE.h5}) equals Keras", dd <= TOL, f"max |diff| {dd:.2e}")
    p = predict_from_keras("from_json_seq", seq_data,
                           {"from_keras": os.path.join(work, "keras_sequential.json"),
                            "weights": os.path.join(work, "keras_sequential_weights.h5")},
                           os.path.join(work, "keras_sequential_weights.h5"))
    dd = float(np.abs(p - y_kseq).max())
    check("(b) Keras Sequential: lockstep predict (to_json + save_weights) equals Keras", dd <= TOL, f"max |diff| {dd:.2e}")

    p = predict_from_keras("from_keras_fun", pair_data, {"from_keras": kfun_h5}, kfun_h5)
    dd, _ = pair_match(p, y_kfun[0])
    check("(b) Keras Functional: lockstep predict (model: {from_keras: FILE.h5}) equals Keras (class_out)", dd <= TOL,
          f"max |diff| {dd:.2e}")
    # The second output and the to_json + save_weights form: the JSON with its outputs swapped.
    cfg = json.loads(kfun.to_json())
    cfg["config"]["output_layers"] = cfg["config"]["output_layers"][::-1]
    swapped_json = os.path.join(work, "keras_functional_swapped.json")
    with open(swapped_json, "w") as f:
        json.dump(cfg, f)
    w = os.path.join(work, "keras_functional_weights.h5")
    p = predict_from_keras("from_json_fun", pair_data, {"from_keras": swapped_json, "weights": w}, w)
    dd, _ = pair_match(p, y_kfun[1])
    check("(b) Keras Functional: lockstep predict (to_json + save_weights) equals Keras (same_out)", dd <= TOL,
          f"max |diff| {dd:.2e}")
    print(f"(b) done in {time.time() - t_b:.1f} s", flush=True)

    # ============================ (c) the chapter: model A -> task B ================================
    t_c = time.time()
    classes_a = [0, 1, 2, 3, 4, 7, 8, 9]
    remap = {c: i for i, c in enumerate(classes_a)}
    keep = np.isin(ys_train, classes_a)
    xa, ya = xs_train[keep], np.array([remap[c] for c in ys_train[keep]])
    tf_keras.utils.set_random_seed(42)
    model_A = K.models.Sequential()
    model_A.add(K.layers.Flatten(input_shape=[28, 28]))
    for n_hidden in (300, 100, 50, 50, 50):
        model_A.add(K.layers.Dense(n_hidden, activation="selu"))
    model_A.add(K.layers.Dense(8, activation="softmax"))
    model_A.compile(loss="sparse_categorical_crossentropy", optimizer=K.optimizers.SGD(learning_rate=1e-3),
                    metrics=["accuracy"])
    hist = model_A.fit(xa, ya, epochs=3, batch_size=32, verbose=0)
    model_A_h5 = os.path.join(work, "my_model_A.h5")
    model_A.save(model_A_h5)
    names = [l.name for l in model_A.layers]
    hidden = [l.name for l in model_A.layers if isinstance(l, K.layers.Dense)][:-1]
    keras_w = {l.name: [np.asarray(w) for w in l.get_weights()] for l in model_A.layers}
    print(f"model A trained by tf_keras: accuracy {hist.history['accuracy'][-1]:.3f}, layers {names}", flush=True)

    # evaluate --checkpoint my_model_A.h5 on a run file whose model is A's.
    layers_a = [{"flatten": {"name": names[0]}}]
    layers_a += [{"dense": {"name": n, "units": u, "activation": "selu"}} for n, u in zip(hidden, (300, 100, 50, 50, 50))]
    layers_a += [{"dense": {"name": names[-1], "units": 8, "activation": "softmax"}}]
    run_a = {"name": "model_a", "seed": 42,
             "data": {"path": seq_data, "scale": 255, "classes": classes_a},
             "model": {"input_shape": [28, 28], "layers": layers_a},
             "loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"],
             "optimizer": {"name": "sgd", "learning_rate": 0.001}}
    run_a_yaml = write_yaml(os.path.join(work, "model_a.yaml"), run_a)
    out = lockstep("evaluate", run_a_yaml, "--checkpoint", model_A_h5)
    got = dict((k, float(v)) for k, v in re.findall(r"(\w+): ([-\d.e+]+)", out.split("samples):")[-1]))
    keep_t = np.isin(ys_test, classes_a)
    k_loss, k_acc = model_A.evaluate(xs_test[keep_t], np.array([remap[c] for c in ys_test[keep_t]]), verbose=0)
    ok = "loss" in got and "accuracy" in got and abs(got["loss"] - k_loss) <= 1e-5 and abs(got["accuracy"] - k_acc) <= 1e-5
    check("(c) lockstep evaluate --checkpoint my_model_A.h5 equals Keras's model.evaluate", ok,
          f"lockstep loss {got.get('loss')} accuracy {got.get('accuracy')}, Keras {k_loss:.6g} {k_acc:.6g}")

    # Task B: sandals (5) vs shirts (6), a new sigmoid head on A's hidden layers, frozen for 2 epochs.
    freeze = 2
    layers_b = layers_a[:-1] + [{"dense": {"name": "new_head", "units": 1, "activation": "sigmoid"}}]
    run_b = {"name": "model_b_on_a", "seed": 42,
             "data": {"path": seq_data, "validation": {"first": 100}, "scale": 255, "classes": [5, 6],
                      "binary_positive": [6], "limit": 64},
             "model": {"input_shape": [28, 28], "layers": layers_b},
             "loss": "binary_crossentropy", "metrics": ["accuracy"],
             "optimizer": {"name": "sgd", "learning_rate": 0.01},
             "transfer": {"from": "my_model_A.h5", "layers": hidden, "freeze_epochs": freeze},
             "checkpoint": {"every_epochs": 1, "keep": 10},
             "train": {"epochs": freeze + 2, "batch_size": 16, "verbose": 2}}
    run_b_yaml = write_yaml(os.path.join(work, "model_b_on_a.yaml"), run_b)
    run_dir = os.path.join(work, "runs/model_b_on_a")
    log = lockstep("train", run_b_yaml, "--run-dir", run_dir)
    ckpts = sorted((int(re.search(r"ckpt-(\d+)", f).group(1)), os.path.join(run_dir, "checkpoints", f))
                   for f in os.listdir(os.path.join(run_dir, "checkpoints")) if f.startswith("ckpt-"))
    steps_b = 64 // 16
    check("(c) task B trained with transfer.from: my_model_A.h5, one checkpoint per epoch named by global step",
          [s for s, _ in ckpts] == [steps_b * e for e in range(1, freeze + 3)] and "Unfreezing" in log,
          f"checkpoints at steps {[s for s, _ in ckpts]}")
    for epoch, (_, path) in enumerate(ckpts, start=1):
        w = lockstep_weights(path)
        equal = all(np.array_equal(w[n]["kernel"], keras_w[n][0]) and np.array_equal(w[n]["bias"], keras_w[n][1])
                    for n in hidden)
        if epoch <= freeze:
            check(f"(c) epoch {epoch} (frozen): the transferred layers equal Keras's weights exactly", equal)
        else:
            check(f"(c) epoch {epoch} (unfrozen): the transferred layers have moved", not equal)
    head = lockstep_weights(ckpts[0][1])["new_head"]["kernel"]
    check("(c) the new head is trained from epoch 1", head.shape == (50, 1) and not np.allclose(head, 0))
    print(f"(c) done in {time.time() - t_c:.1f} s", flush=True)
    # ============================ (d) CNNs, both ways =============================================
    # lockstep -> Keras: a Sequential CNN (conv2d, batch_normalization, pooling, dropout) and a Functional
    # residual block (add, depthwise_conv2d, zero_padding2d, spatial_dropout2d, global pooling), trained a
    # few steps by lockstep; Keras -> lockstep: a Sequential CNN saved by tf_keras and a Functional one
    # saved by Keras 3 (whose DepthwiseConv2D weight is named `kernel`, not `depthwise_kernel`).
    t_d = time.time()
    xi_test = xs_test[..., None]  # [N, 28, 28, 1]: lockstep reads the [N, 28, 28] data with C = 1
    cnn_seq = {"name": "cnn_sequential", "input_shape": [28, 28, 1], "layers": [
        {"conv2d": {"filters": 8, "kernel_size": 3, "padding": "same", "activation": "relu",
                    "kernel_initializer": "he_normal", "kernel_regularizer": {"l2": 1e-4}}},
        {"batch_normalization": {"momentum": 0.9}},
        {"max_pooling2d": {}},
        {"conv2d": {"filters": 12, "kernel_size": [3, 2], "strides": [2, 1], "groups": 4, "use_bias": False,
                    "kernel_constraint": {"max_norm": {"max_value": 2.0, "axis": 2}}}},
        {"activation": {"activation": "elu"}},
        {"average_pooling2d": {"pool_size": 2, "padding": "same"}},
        {"max_pooling2d": {"pool_size": [2, 3], "strides": 1}},
        {"dropout": {"rate": 0.2}},
        {"flatten": {}},
        {"dense": {"units": 10, "activation": "softmax"}},
    ]}
    cnn_fun = {
        "name": "cnn_residual",
        "inputs": [{"input": {"name": "image", "shape": [28, 28, 1]}}],
        "layers": [
            {"conv2d": {"name": "stem", "filters": 6, "kernel_size": 3, "strides": 2, "padding": "same",
                        "activation": "relu"}, "inputs": "image"},
            {"depthwise_conv2d": {"name": "dw", "kernel_size": 3, "padding": "same",
                                  "depthwise_initializer": "he_uniform", "bias_initializer": {"constant": {"value": 0.05}}}},
            {"batch_normalization": {"name": "dw_bn"}},
            {"activation": {"name": "dw_relu", "activation": "relu"}},
            {"conv2d": {"name": "pw", "filters": 6, "kernel_size": 1}},
            {"add": {"name": "residual"}, "inputs": ["stem", "pw"]},
            {"zero_padding2d": {"name": "pad", "padding": [[1, 0], [0, 1]]}},
            {"depthwise_conv2d": {"name": "dw2", "kernel_size": 2, "depth_multiplier": 2, "use_bias": False}},
            {"conv2d": {"name": "dilated", "filters": 8, "kernel_size": 3, "dilation_rate": 2, "activation": "tanh"}},
            {"spatial_dropout2d": {"name": "sdrop", "rate": 0.2}},
            {"global_average_pooling2d": {"name": "gap"}, "inputs": "sdrop"},
            {"global_max_pooling2d": {"name": "gmp", "keepdims": True}, "inputs": "sdrop"},
            {"flatten": {"name": "gmp_flat"}},
            {"concatenate": {"name": "pooled"}, "inputs": ["gap", "gmp_flat"]},
            {"dense": {"name": "out", "units": 10, "activation": "softmax"}},
        ],
        "outputs": "out",
    }
    for what, model, opt in (("CNN Sequential", cnn_seq, {"name": "nadam", "learning_rate": 0.002}),
                             ("CNN Functional", cnn_fun, {"name": "adam", "learning_rate": 0.003})):
        stem = what.replace(" ", "_").lower()
        run = {"name": stem, "seed": 5,
               "data": {"path": seq_data, "validation": {"first": 100}, "scale": 255, "limit": 96},
               "model": model, "loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"],
               "optimizer": opt, "train": {"epochs": 1, "batch_size": 32, "verbose": 0}}
        run_yaml = write_yaml(os.path.join(work, stem + ".yaml"), run)
        lockstep("train", run_yaml, "--run-dir", os.path.join(work, "runs", stem))
        ckpt = os.path.join(work, "runs", stem, "final.h5")
        p_lock = lockstep_predict(run_yaml, ckpt, os.path.join(work, stem + ".pred.h5"))
        out_h5 = os.path.join(work, stem + "_export.h5")
        lockstep("export", ckpt, "--out", out_h5)
        mt, m3 = load_both(out_h5, f"(d) {what} export")
        check_optimizer_state(out_h5, mt, 96 // 32, f"(d) {what}")
        n_params = sum(int(np.prod(w.shape)) for ws in lockstep_weights(ckpt).values() for w in ws.values())
        for lib, m in (("tf_keras", mt), ("Keras 3", m3)):
            check(f"(d) {what}: {lib} count_params equals lockstep's", m.count_params() == n_params,
                  f"{m.count_params()} vs {n_params}")
            check(f"(d) {what}: {lib} has lockstep's layers, in lockstep's order",
                  [l.name for l in m.layers] == lockstep_layer_names(ckpt))
            x_in = [xi_test] if "inputs" in model else xi_test  # input_layers is a list: Keras 3 warns about a bare tensor
            dd = float(np.abs(keras_predict(m, x_in)[0] - p_lock).max())
            check(f"(d) {what}: {lib} predictions equal lockstep's", dd <= TOL, f"max |diff| {dd:.2e} over {p_lock.shape}")

    # Keras -> lockstep.
    def keras_cnns(K, functional):
        if not functional:
            return K.Sequential([
                K.Input(shape=(28, 28, 1)),
                K.layers.Conv2D(8, 3, padding="same", activation="relu", kernel_regularizer=K.regularizers.l2(1e-4)),
                K.layers.BatchNormalization(),
                K.layers.MaxPooling2D(),
                K.layers.Conv2D(12, (3, 2), strides=(2, 1), groups=4, use_bias=False),
                K.layers.ELU(),
                K.layers.AveragePooling2D(2, padding="same"),
                K.layers.Dropout(0.2),
                K.layers.Flatten(),
                K.layers.Dense(10, activation="softmax"),
            ], name="keras_cnn_sequential")
        x = K.Input(shape=(28, 28, 1), name="image")
        stem = K.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="stem")(x)
        h = K.layers.DepthwiseConv2D(3, padding="same", name="dw")(stem)
        h = K.layers.BatchNormalization(name="dw_bn")(h)
        h = K.layers.ReLU(name="dw_relu")(h)
        h = K.layers.Conv2D(6, 1, name="pw")(h)
        h = K.layers.Add(name="residual")([stem, h])
        h = K.layers.ZeroPadding2D(((1, 0), (0, 1)), name="pad")(h)
        h = K.layers.DepthwiseConv2D(2, depth_multiplier=2, use_bias=False, name="dw2")(h)
        h = K.layers.Conv2D(8, 3, dilation_rate=2, activation="tanh", name="dilated")(h)
        h = K.layers.SpatialDropout2D(0.2, name="sdrop")(h)
        g1 = K.layers.GlobalAveragePooling2D(name="gap")(h)
        g2 = K.layers.Flatten(name="gmp_flat")(K.layers.GlobalMaxPooling2D(keepdims=True, name="gmp")(h))
        y = K.layers.Dense(10, activation="softmax", name="out")(K.layers.Concatenate(name="pooled")([g1, g2]))
        return K.Model(x, y, name="keras_cnn_residual")

    for lib, K, functional in (("tf_keras", tf_keras, False), ("tf_keras", tf_keras, True), ("Keras 3", keras, True)):
        what = f"{lib} CNN {'Functional' if functional else 'Sequential'}"
        K.utils.set_random_seed(4)
        km = keras_cnns(K, functional)
        km.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
        km.fit(xs_train[:64, ..., None], ys_train[:64], epochs=1, batch_size=32, verbose=0)
        path = os.path.join(work, what.replace(" ", "_").lower() + ".h5")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras 3: "You are saving your model as an HDF5 file ... legacy"
            km.save(path)
        y_k = keras_predict(km, xi_test)[0]
        n = total_params(lockstep("summary", path))
        check(f"(d) {what}: lockstep summary total equals count_params", n == km.count_params(),
              f"{n} vs {km.count_params()}")
        stem = what.replace(" ", "_").lower()
        p = predict_from_keras("from_" + stem, seq_data, {"from_keras": path}, path)
        dd = float(np.abs(p - y_k).max())
        check(f"(d) {what}: lockstep predict (model: {{from_keras: FILE.h5}}) equals Keras", dd <= TOL, f"max |diff| {dd:.2e}")
    print(f"(d) done in {time.time() - t_d:.1f} s", flush=True)
except Exception as e:  # a lockstep command or a Keras call failed: report it as a failure, keep the summary
    import traceback
    traceback.print_exc()
    check("the test ran to its end", False, f"{type(e).__name__}: {str(e)[:400]}")
finally:
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)

n_fail = sum(1 for ok, _, _ in results if not ok)
print(f"keras_roundtrip: {len(results) - n_fail} passed, {n_fail} failed ({time.time() - T0:.0f} s)")
sys.exit(1 if n_fail else 0)
