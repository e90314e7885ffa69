#!/usr/bin/env python3
"""Golden training tests against tf.keras (label keras; tests/keras/CMakeLists.txt).

The same model, the same initial weights (exported by lockstep), the same batches: trained K steps in
lockstep and in tf_keras with its legacy optimizers (tf.keras 2.10's update rules, the ones
../shared/reference/keras-semantics.md specifies), weights compared after every step.

How each training case runs:
  1. A tiny dataset in lockstep's HDF5 layout (docs/data.md), written with h5py: uint8 images, integer
     labels; `scale: 255`. lockstep's x is uint8 * float32(1/255), which the Keras side reproduces bit for bit.
  2. The initial weights. A lockstep run cannot stop before its first step (train.epochs >= 1), so the
     step-0 weights come from an "init run": the same model and seed (initial weights are a function of
     (seed, layer) only), one step of SGD with learning_rate 1e-30 (lockstep refuses 0; w - 1e-30*g == w in
     float32 except that zeros become ~1e-30, far below any tolerance here), kernel constraints
     left out (max-norm would act after that step) and BatchNormalization momentum 1 (moving statistics
     unchanged). Its final.h5 is exported with `lockstep export` (init.h5). That this is the step-0 state
     is checked by the comparison itself: a wrong start fails at step 1.
  3. The real run: train.shuffle false (the loader keeps file order), checkpoint.every_steps 1 with a
     large keep: checkpoints/ckpt-<step>.h5 after every step. Its final.h5 is exported (model.h5).
  4. tf_keras: load_model(model.h5, compile=False) (the architecture, constraints, regularizers, BN
     settings as lockstep exports them), load_weights(init.h5), compile with the legacy optimizer and
     the same options, then train_on_batch on the same batches in order; per-epoch schedules, 1cycle and
     ReduceLROnPlateau are callbacks in Keras and are applied here as the book's callbacks do.
  5. After every step every weight (kernels, biases, BN gamma/beta/moving statistics, PReLU alphas) is
     compared with lockstep's checkpoint of that step: max |lockstep - keras| / max(max |keras|, 1e-3)
     over each tensor must be <= RTOL (1e-5, float32).

Other cases: every loss and metric on fixed predictions (a Keras-built .h5 evaluated by `lockstep
evaluate`, 6 printed digits: RTOL_PRINTED), initializer statistics (mean/std/bounds of large kernels vs
Keras's draws), dropout models in inference (predictions of a lockstep-trained dropout model), and a
2-rank lockstep run (mpirun -np 2) against the single-process Keras run.

Usage: golden_training.py --lockstep BUILD/launch/lockstep [--work DIR] [--only SUBSTR] [--mpirun mpirun]
Prints one line per case and "N passed, M failed"; exit 1 if any failed.
"""
import argparse
import glob
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
import h5py  # noqa: E402
import numpy as np  # noqa: E402

RTOL = 1e-5           # float32 weights after each step, relative to the tensor's largest magnitude
RTOL_PRINTED = 2e-5   # values printed by `lockstep evaluate` with 6 significant digits
ARGS = None
TF = None
TFK = None


def tfk():
    global TF, TFK
    if TFK is None:
        import tensorflow as tf
        import tf_keras
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.threading.set_intra_op_parallelism_threads(2)
        TF, TFK = tf, tf_keras
    return TFK


def run(cmd, **kw):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> exit {p.returncode}\n{p.stdout[-3000:]}")
    return p.stdout


def write_yaml(path, cfg):
    with open(path, "w") as f:
        json.dump(cfg, f, indent=1)  # JSON is YAML


def make_data(path, n, shape, labels, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n,) + tuple(shape), dtype=np.uint8)
    y = np.asarray(labels(rng, n)).astype(np.uint8)
    with h5py.File(path, "w") as f:
        f.create_dataset("train/x", data=x)
        f.create_dataset("train/y", data=y)
        f.create_dataset("test/x", data=x)
        f.create_dataset("test/y", data=y)
    return x.astype(np.float32) * np.float32(1.0 / 255.0), y


def read_weights(path):
    """{layer/weight: array} of a lockstep checkpoint or an exported Keras .h5."""
    out = {}
    with h5py.File(path, "r") as f:
        g = f["model_weights"]
        for layer in g.attrs["layer_names"]:
            layer = layer.decode() if isinstance(layer, bytes) else str(layer)
            lg = g[layer]
            for wn in lg.attrs.get("weight_names", []):
                wn = wn.decode() if isinstance(wn, bytes) else str(wn)
                out[layer + "/" + wn.split("/")[-1].split(":")[0]] = np.array(lg[wn])
    return out


def keras_weights(model):
    out = {}
    for layer in model.layers:
        for w in layer.weights:
            out[layer.name + "/" + w.name.split("/")[-1].split(":")[0]] = w.numpy()
    return out


WORST = {}


def compare(ls, ks, what):
    worst = 0.0
    if set(ls) != set(ks):
        raise AssertionError(f"{what}: weight names differ: lockstep {sorted(ls)} keras {sorted(ks)}")
    for k in ls:
        a, b = ls[k], ks[k]
        if a.shape != b.shape:
            raise AssertionError(f"{what}: {k} shape {a.shape} vs {b.shape}")
        err = float(np.max(np.abs(a.astype(np.float64) - b))) / max(float(np.max(np.abs(b))), 1e-3) if a.size else 0.0
        if not err <= RTOL:
            raise AssertionError(f"{what}: {k} relative error {err:.3g} > {RTOL:g}\n lockstep {a.ravel()[:6]}\n keras    {b.ravel()[:6]}")
        if err >= worst:
            worst = err
            WORST["at"] = f"{what} {k}"
    return worst


# ---------------------------------------------------------------- Keras optimizer from lockstep's config
def keras_optimizer(o):
    K = tfk()
    o = dict(o)
    name = o.pop("name")
    o.pop("schedule", None)
    cls = {"sgd": K.optimizers.legacy.SGD, "adam": K.optimizers.legacy.Adam, "adagrad": K.optimizers.legacy.Adagrad,
           "rmsprop": K.optimizers.legacy.RMSprop, "adamax": K.optimizers.legacy.Adamax,
           "nadam": K.optimizers.legacy.Nadam}[name]
    return cls(**o)


def keras_schedule(s, lr):
    K = tfk()
    s = dict(s)
    name = s.pop("name")
    if s.get("per", "step") == "epoch" or name in ("one_cycle", "reduce_lr_on_plateau"):
        return None  # a callback (applied by the driver)
    s.pop("per", None)
    lr0 = s.pop("initial_learning_rate", lr)
    if name == "exponential_decay":
        return K.optimizers.schedules.ExponentialDecay(lr0, **s)
    if name == "inverse_time_decay":
        return K.optimizers.schedules.InverseTimeDecay(lr0, **s)
    if name == "piecewise_constant_decay":
        return K.optimizers.schedules.PiecewiseConstantDecay(**s)
    raise ValueError(name)


def per_epoch_rate(s, lr, epoch):
    """Keras's LearningRateScheduler with the chapter's functions (what lockstep's `per: epoch` is)."""
    lr0 = s.get("initial_learning_rate", lr)
    t = float(epoch)
    if s["name"] == "exponential_decay":
        p = t / s["decay_steps"]
        return lr0 * s["decay_rate"] ** (math.floor(p) if s.get("staircase") else p)
    if s["name"] == "inverse_time_decay":
        p = t / s["decay_steps"]
        return lr0 / (1 + s["decay_rate"] * (math.floor(p) if s.get("staircase") else p))
    if s["name"] == "piecewise_constant_decay":
        for b, v in zip(s["boundaries"], s["values"]):
            if t <= b:
                return v
        return s["values"][-1]
    raise ValueError(s["name"])


class OneCycleScheduler:
    """The book's OneCycleScheduler (HML2 ch. 11), plus momentum cycling (1cycle paper) when asked."""

    def __init__(self, iterations, max_rate, start_rate=None, last_iterations=None, last_rate=None,
                 max_momentum=0.95, min_momentum=0.85, cycle_momentum=True):
        self.iterations = iterations
        self.max_rate = max_rate
        self.start_rate = start_rate or max_rate / 10
        self.last_iterations = last_iterations or iterations // 10 + 1
        self.half_iteration = (iterations - self.last_iterations) // 2
        self.last_rate = last_rate or self.start_rate / 1000
        self.iteration = 0
        self.mom = (max_momentum, min_momentum) if cycle_momentum else None

    def _interpolate(self, iter1, iter2, rate1, rate2):
        return (rate2 - rate1) * (self.iteration - iter1) / (iter2 - iter1) + rate1

    def on_batch_begin(self, opt):
        K = tfk()
        h = self.half_iteration
        if self.iteration < h:
            rate = self._interpolate(0, h, self.start_rate, self.max_rate)
        elif self.iteration < 2 * h:
            rate = self._interpolate(h, 2 * h, self.max_rate, self.start_rate)
        else:
            rate = self._interpolate(2 * h, self.iterations, self.start_rate, self.last_rate)
        K.backend.set_value(opt.learning_rate, rate)
        if self.mom:
            hi, lo = self.mom
            if self.iteration < h:
                m = self._interpolate(0, h, hi, lo)
            elif self.iteration < 2 * h:
                m = self._interpolate(h, 2 * h, lo, hi)
            else:
                m = hi
            K.backend.set_value(opt.momentum if hasattr(opt, "momentum") and not callable(opt.momentum) else opt.beta_1, m)
        self.iteration += 1


class Plateau:
    """Keras's ReduceLROnPlateau (mode min, the defaults), on the monitored epoch value."""

    def __init__(self, factor=0.1, patience=10, min_delta=1e-4, cooldown=0, min_lr=0.0, monitor="loss", **_):
        self.factor, self.patience, self.min_delta, self.cooldown, self.min_lr = factor, patience, min_delta, cooldown, min_lr
        self.best, self.wait, self.cooldown_counter = float("inf"), 0, 0

    def on_epoch_end(self, opt, current):
        K = tfk()
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if current < self.best - self.min_delta:
            self.best, self.wait = current, 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                old = float(K.backend.get_value(opt.learning_rate))
                if old > np.float32(self.min_lr):
                    K.backend.set_value(opt.learning_rate, max(old * self.factor, self.min_lr))
                    self.cooldown_counter, self.wait = self.cooldown, 0


# ---------------------------------------------------------------- one training case
def strip_for_init(layers):
    out = []
    for entry in layers:
        entry = json.loads(json.dumps(entry))
        for key, args in entry.items():
            if isinstance(args, dict):
                args.pop("kernel_constraint", None)
                args.pop("alpha_constraint", None)
                if key == "batch_normalization":
                    args["momentum"] = 1.0
        out.append(entry)
    return out


def train_case(name, layers, optimizer, loss="sparse_categorical_crossentropy", steps=5, batch=8, epochs=1,
               shape=(3, 4), classes=3, schedule=None, callbacks=None, ranks=1, input_shape=None, keras_loss=None,
               labels=None, seed=7):
    """Train `epochs` x `steps` steps in lockstep and in tf_keras; compare after every step."""
    d = os.path.join(ARGS.work, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    n = steps * batch
    if labels is None:
        labels = lambda rng, n: rng.integers(0, classes, size=n)  # noqa: E731
    x, y = make_data(os.path.join(d, "data.h5"), n, shape, labels, seed)
    base = {"seed": 42, "data": {"path": "data.h5", "scale": 255},
            "model": {"input_shape": list(input_shape or shape), "layers": layers}, "loss": loss}
    # 1. the init run
    init = dict(base, model={"input_shape": base["model"]["input_shape"], "layers": strip_for_init(layers)},
                optimizer={"name": "sgd", "learning_rate": 1e-30},
                train={"epochs": 1, "batch_size": batch, "shuffle": False, "verbose": 0},
                checkpoint={"every_epochs": 0})
    init["data"] = dict(base["data"], limit=batch)
    write_yaml(os.path.join(d, "init.yaml"), init)
    run([ARGS.lockstep, "train", os.path.join(d, "init.yaml"), "--run-dir", os.path.join(d, "init")])
    run([ARGS.lockstep, "export", os.path.join(d, "init", "final.h5"), "--out", os.path.join(d, "init_keras.h5")])
    # 2. the real run
    cfg = dict(base, optimizer=optimizer, train={"epochs": epochs, "batch_size": batch, "shuffle": False, "verbose": 0},
               checkpoint={"every_steps": 1, "every_epochs": 1, "keep": 100000})
    if schedule:
        cfg["schedule"] = schedule
    if callbacks:
        cfg["callbacks"] = callbacks
    write_yaml(os.path.join(d, "run.yaml"), cfg)
    cmd = [ARGS.lockstep, "train", os.path.join(d, "run.yaml"), "--run-dir", os.path.join(d, "run"), "--threads", "1"]
    env = dict(os.environ)
    if ranks > 1:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")
        cmd = [ARGS.mpirun, "-np", str(ranks), "--timeout", "120", "--oversubscribe"] + cmd
    run(cmd, env=env)
    run([ARGS.lockstep, "export", os.path.join(d, "run", "final.h5"), "--out", os.path.join(d, "model_keras.h5")])
    # 3. Keras
    K = tfk()
    model = K.models.load_model(os.path.join(d, "model_keras.h5"), compile=False)
    model.load_weights(os.path.join(d, "init_keras.h5"))
    o = dict(optimizer)
    lr = o.get("learning_rate", {"sgd": 0.01}.get(o["name"], 0.001))
    sched = keras_schedule(schedule, lr) if schedule else None
    if sched is not None:
        o["learning_rate"] = sched
    opt = keras_optimizer(o)
    kl = keras_loss or loss
    if isinstance(kl, dict):
        (ln, largs), = kl.items()
        kl = K.losses.get({"class_name": ln, "config": largs})
    model.compile(optimizer=opt, loss=kl, run_eagerly=ARGS.eager)
    ckpts = sorted(glob.glob(os.path.join(d, "run", "checkpoints", "ckpt-*.h5")))
    if len(ckpts) != steps * epochs:
        raise AssertionError(f"{len(ckpts)} checkpoints, expected {steps * epochs}")
    onecycle = None
    if schedule and schedule["name"] == "one_cycle":
        sa = {k: v for k, v in schedule.items() if k not in ("name",)}
        onecycle = OneCycleScheduler(iterations=sa.pop("iterations", steps * epochs), **sa)
    plateau = None
    if callbacks and "reduce_lr_on_plateau" in callbacks:
        plateau = Plateau(**callbacks["reduce_lr_on_plateau"])
    worst, step = 0.0, 0
    yk = y.astype(np.float32) if loss != "sparse_categorical_crossentropy" else y
    for epoch in range(epochs):
        if schedule and schedule.get("per") == "epoch":
            K.backend.set_value(opt.learning_rate, per_epoch_rate(schedule, lr, epoch))
        losses = []
        for s in range(steps):
            if onecycle:
                onecycle.on_batch_begin(opt)
            sl = slice(s * batch, (s + 1) * batch)
            losses.append(float(model.train_on_batch(x[sl], yk[sl])))
            e = compare(read_weights(ckpts[step]), keras_weights(model), f"step {step + 1}")
            if e >= worst:
                worst, at = e, WORST["at"]
            WORST["at"] = at
            step += 1
        if plateau:
            plateau.on_epoch_end(opt, float(np.mean(losses)))
    return f"{steps * epochs} steps, max rel err {worst:.2g}" + (f" ({WORST['at']})" if worst > 2e-6 else "")


# ---------------------------------------------------------------- the cases
def dense(units, **kw):
    return {"dense": dict(units=units, **kw)}


MLP = [{"flatten": {}}, dense(5, activation="elu"), dense(3, activation="softmax")]


def optimizer_cases():
    c = {}
    c["sgd"] = ({"name": "sgd", "learning_rate": 0.1},)
    c["sgd_momentum"] = ({"name": "sgd", "learning_rate": 0.1, "momentum": 0.9},)
    c["sgd_nesterov"] = ({"name": "sgd", "learning_rate": 0.1, "momentum": 0.9, "nesterov": True},)
    c["adagrad"] = ({"name": "adagrad", "learning_rate": 0.1},)
    c["adagrad_init_acc"] = ({"name": "adagrad", "learning_rate": 0.05, "initial_accumulator_value": 0.5, "epsilon": 1e-3},)
    c["rmsprop"] = ({"name": "rmsprop", "learning_rate": 0.01},)
    c["rmsprop_momentum"] = ({"name": "rmsprop", "learning_rate": 0.01, "momentum": 0.9},)
    c["rmsprop_centered"] = ({"name": "rmsprop", "learning_rate": 0.01, "centered": True},)
    c["rmsprop_centered_momentum"] = ({"name": "rmsprop", "learning_rate": 0.01, "centered": True, "momentum": 0.5, "rho": 0.8},)
    c["adam"] = ({"name": "adam", "learning_rate": 0.01},)
    c["adam_amsgrad"] = ({"name": "adam", "learning_rate": 0.01, "amsgrad": True, "beta_1": 0.8, "beta_2": 0.9},)
    c["adamax"] = ({"name": "adamax", "learning_rate": 0.01},)
    c["nadam"] = ({"name": "nadam", "learning_rate": 0.01},)
    c["nadam_betas"] = ({"name": "nadam", "learning_rate": 0.01, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-4},)
    return {f"optimizer/{k}": (lambda o=v[0], k=k: train_case("opt_" + k, MLP, o, steps=6)) for k, v in c.items()}


def clipping_cases():
    big = [{"flatten": {}}, dense(5, activation="relu"), dense(3, activation="softmax")]
    c = {}
    for opt in ("sgd", "adam"):
        lr = 0.5 if opt == "sgd" else 0.01
        c[f"{opt}_clipvalue"] = {"name": opt, "learning_rate": lr, "clipvalue": 0.01}
        c[f"{opt}_clipnorm"] = {"name": opt, "learning_rate": lr, "clipnorm": 0.02}
        c[f"{opt}_global_clipnorm"] = {"name": opt, "learning_rate": lr, "global_clipnorm": 0.05}
        c[f"{opt}_clipvalue_global_clipnorm"] = {"name": opt, "learning_rate": lr, "clipvalue": 0.01, "global_clipnorm": 0.02}
    c["sgd_momentum_decay"] = {"name": "sgd", "learning_rate": 0.2, "momentum": 0.9, "decay": 0.1}
    c["adam_decay"] = {"name": "adam", "learning_rate": 0.01, "decay": 0.2}
    c["rmsprop_decay"] = {"name": "rmsprop", "learning_rate": 0.01, "decay": 0.3}
    c["adagrad_decay"] = {"name": "adagrad", "learning_rate": 0.1, "decay": 0.3}
    c["adamax_decay"] = {"name": "adamax", "learning_rate": 0.01, "decay": 0.3}
    return {f"clip_decay/{k}": (lambda o=v, k=k: train_case("clip_" + k, big, o, steps=6)) for k, v in c.items()}


def schedule_cases():
    c = {}
    sgd = {"name": "sgd", "learning_rate": 0.2, "momentum": 0.5}
    c["exponential_decay"] = (sgd, {"name": "exponential_decay", "decay_steps": 2, "decay_rate": 0.5}, 1, 6)
    c["exponential_decay_staircase"] = (sgd, {"name": "exponential_decay", "initial_learning_rate": 0.3, "decay_steps": 2,
                                              "decay_rate": 0.5, "staircase": True}, 1, 6)
    c["inverse_time_decay"] = (sgd, {"name": "inverse_time_decay", "decay_steps": 1, "decay_rate": 0.5}, 1, 6)
    c["inverse_time_decay_staircase"] = ({"name": "adam", "learning_rate": 0.01},
                                         {"name": "inverse_time_decay", "decay_steps": 3, "decay_rate": 1.0, "staircase": True}, 1, 6)
    c["piecewise_constant_decay"] = (sgd, {"name": "piecewise_constant_decay", "boundaries": [1, 3], "values": [0.3, 0.1, 0.02]}, 1, 6)
    c["exponential_per_epoch"] = (sgd, {"name": "exponential_decay", "initial_learning_rate": 0.3, "decay_steps": 1,
                                        "decay_rate": 0.1, "per": "epoch"}, 3, 2)
    c["piecewise_per_epoch"] = (sgd, {"name": "piecewise_constant_decay", "boundaries": [0, 1], "values": [0.3, 0.1, 0.01],
                                      "per": "epoch"}, 3, 2)
    c["inverse_time_per_epoch"] = ({"name": "adam", "learning_rate": 0.02},
                                   {"name": "inverse_time_decay", "decay_steps": 1, "decay_rate": 2.0, "per": "epoch"}, 3, 2)
    c["one_cycle_sgd"] = ({"name": "sgd", "learning_rate": 0.1, "momentum": 0.9},
                          {"name": "one_cycle", "max_rate": 0.3}, 2, 6)
    c["one_cycle_no_momentum_cycle"] = ({"name": "sgd", "learning_rate": 0.1},
                                        {"name": "one_cycle", "max_rate": 0.3, "cycle_momentum": False}, 2, 6)
    c["one_cycle_adam"] = ({"name": "adam", "learning_rate": 0.01},
                           {"name": "one_cycle", "max_rate": 0.05, "iterations": 12, "last_iterations": 3}, 2, 6)
    out = {f"schedule/{k}": (lambda v=v, k=k: train_case("sched_" + k, MLP, v[0], schedule=v[1], epochs=v[2], steps=v[3]))
           for k, v in c.items()}
    out["schedule/reduce_lr_on_plateau"] = lambda: train_case(
        "sched_plateau", MLP, {"name": "sgd", "learning_rate": 2.0, "momentum": 0.9},
        callbacks={"reduce_lr_on_plateau": {"monitor": "loss", "patience": 1, "factor": 0.5}}, epochs=5, steps=2)
    return out


def regularizer_cases():
    c = {}
    c["l2"] = [{"flatten": {}}, dense(5, activation="tanh", kernel_regularizer={"l2": 0.05}), dense(3, activation="softmax")]
    c["l1"] = [{"flatten": {}}, dense(5, activation="tanh", kernel_regularizer={"l1": 0.01}), dense(3, activation="softmax")]
    c["l1_l2_bias"] = [{"flatten": {}}, dense(5, activation="tanh", kernel_regularizer={"l1_l2": {"l1": 0.01, "l2": 0.02}},
                                              bias_initializer={"constant": {"value": 0.1}}, bias_regularizer={"l2": 0.1}),
                       dense(3, activation="softmax", kernel_regularizer="l2")]
    c["max_norm"] = [{"flatten": {}}, dense(5, activation="relu", kernel_initializer={"random_normal": {"stddev": 1.0}},
                                            kernel_constraint={"max_norm": 1.0}), dense(3, activation="softmax", kernel_constraint={"max_norm": {"max_value": 0.5, "axis": 0}})]
    opts = {"l2": {"name": "sgd", "learning_rate": 0.2}, "l1": {"name": "adam", "learning_rate": 0.01},
            "l1_l2_bias": {"name": "sgd", "learning_rate": 0.2, "momentum": 0.9, "clipnorm": 0.5},
            "max_norm": {"name": "sgd", "learning_rate": 0.5}}
    return {f"regularizer/{k}": (lambda v=v, k=k: train_case("reg_" + k, v, opts[k], steps=5)) for k, v in c.items()}


def bn_cases():
    bn_train = [{"flatten": {}}, {"batch_normalization": {}}, dense(6, activation="elu", kernel_initializer="he_normal"),
                {"batch_normalization": {"momentum": 0.9, "epsilon": 0.01}}, dense(3, activation="softmax")]
    bn_frozen = [{"flatten": {}}, {"batch_normalization": {"trainable": False, "moving_mean_initializer": {"constant": {"value": 0.3}},
                                                          "moving_variance_initializer": {"constant": {"value": 2.0}}}},
                 dense(6, activation="elu"), dense(3, activation="softmax")]
    bn_nocenter = [{"flatten": {}}, dense(6, use_bias=False), {"batch_normalization": {"center": False, "momentum": 0.5}},
                   {"activation": {"activation": "relu"}}, dense(3, activation="softmax")]
    return {
        "bn/training": lambda: train_case("bn_train", bn_train, {"name": "adam", "learning_rate": 0.01}, steps=5),
        "bn/inference_frozen": lambda: train_case("bn_frozen", bn_frozen, {"name": "sgd", "learning_rate": 0.1, "momentum": 0.9}, steps=5),
        "bn/no_center_before_activation": lambda: train_case("bn_nocenter", bn_nocenter, {"name": "rmsprop", "learning_rate": 0.01}, steps=5),
    }


ACTIVATIONS = ["linear", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "selu", "softmax", "softplus", "softsign", "swish"]


def activation_cases():
    out = {}
    for a in ACTIVATIONS:
        layers = [{"flatten": {}}, dense(6, activation=a, kernel_initializer={"random_normal": {"stddev": 0.5}},
                                         bias_initializer={"random_uniform": {}}), dense(3, activation="softmax")]
        out[f"activation/{a}"] = (lambda layers=layers, a=a: train_case("act_" + a, layers, {"name": "sgd", "learning_rate": 0.5}, steps=4))
    layers = [{"flatten": {}}, dense(6), {"leaky_relu": {"alpha": 0.2}}, dense(6), {"elu": {"alpha": 0.5}}, dense(6), {"relu": {}},
              dense(6), {"prelu": {"alpha_initializer": {"constant": {"value": 0.25}}}}, dense(3), {"softmax": {}}]
    out["activation/layers_leaky_elu_relu_prelu_softmax"] = lambda: train_case("act_layers", layers, {"name": "adam", "learning_rate": 0.02}, steps=5)
    return out


def loss_training_cases():
    bin_labels = lambda rng, n: rng.integers(0, 2, size=n)  # noqa: E731
    out = {}
    out["loss_train/binary_crossentropy_sigmoid"] = lambda: train_case(
        "lt_bce", [{"flatten": {}}, dense(4, activation="relu"), dense(1, activation="sigmoid")],
        {"name": "adam", "learning_rate": 0.02}, loss="binary_crossentropy", labels=bin_labels)
    out["loss_train/binary_crossentropy_logits_smoothing"] = lambda: train_case(
        "lt_bce_logits", [{"flatten": {}}, dense(4, activation="relu"), dense(1)], {"name": "adam", "learning_rate": 0.02},
        loss={"binary_crossentropy": {"from_logits": True, "label_smoothing": 0.2}}, labels=bin_labels,
        keras_loss={"BinaryCrossentropy": {"from_logits": True, "label_smoothing": 0.2}})
    out["loss_train/sparse_cce_logits"] = lambda: train_case(
        "lt_scce_logits", [{"flatten": {}}, dense(4, activation="relu"), dense(3)], {"name": "sgd", "learning_rate": 0.3},
        loss={"sparse_categorical_crossentropy": {"from_logits": True}},
        keras_loss={"SparseCategoricalCrossentropy": {"from_logits": True}})
    out["loss_train/mse"] = lambda: train_case(
        "lt_mse", [{"flatten": {}}, dense(4, activation="tanh"), dense(1)], {"name": "sgd", "learning_rate": 0.01},
        loss="mean_squared_error")
    return out


# ---------------------------------------------------------------- losses and metrics on fixed predictions
def eval_case(name, out_act, units, loss, keras_loss, metrics, labels, probs_path=False):
    """A Keras-built model (fixed weights) evaluated by Keras and by `lockstep evaluate`.

    lockstep's labels are one integer per sample: for categorical_crossentropy / mse on K outputs it
    broadcasts the label over the K columns (as Keras broadcasts a (B, 1) label), so Keras gets the
    label repeated K times. probs_path: a cross-entropy on the output of the *other* activation
    (softmax + binary, sigmoid + sparse categorical): Keras 2.10's logit recovery takes that
    activation's logits anyway (keras-semantics §8.1), computing the loss of a different model;
    lockstep computes it from the probabilities, which must equal Keras's own from-probabilities
    path (the loss function on a plain tensor), and model.evaluate must differ (documented in
    docs/configuration.md, "Differences from tf.keras")."""
    K = tfk()
    d = os.path.join(ARGS.work, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    x, y = make_data(os.path.join(d, "data.h5"), 40, (2, 3), labels, 11)
    rng = np.random.default_rng(5)
    inp = K.Input(shape=(2, 3))
    h = K.layers.Flatten()(inp)
    out = K.layers.Dense(units, activation=out_act)(h)
    model = K.Model(inp, out)
    model.set_weights([rng.normal(0, 3.0, size=(6, units)).astype(np.float32), rng.normal(0, 1, size=units).astype(np.float32)])
    model.save(os.path.join(d, "fixed.h5"))
    cfg = {"seed": 1, "data": {"path": "data.h5", "scale": 255}, "model": {"from_keras": "fixed.h5"}, "loss": loss,
           "metrics": metrics, "optimizer": "sgd", "train": {"batch_size": 40}}
    write_yaml(os.path.join(d, "run.yaml"), cfg)
    txt = run([ARGS.lockstep, "evaluate", os.path.join(d, "run.yaml"), "--checkpoint", os.path.join(d, "fixed.h5"), "--split", "test"])
    got = dict(re.findall(r"(\w+): (-?nan|-?inf|[-+0-9.eE]+)", txt.splitlines()[-1]))
    kl = keras_loss
    if isinstance(kl, dict):
        (ln, largs), = kl.items()
        kl = K.losses.get({"class_name": ln, "config": largs})
    model.compile(loss=kl, metrics=metrics)
    sparse = loss == "sparse_categorical_crossentropy" or (isinstance(loss, dict) and "sparse_categorical_crossentropy" in loss)
    yk = y if sparse else np.repeat(y.astype(np.float32)[:, None], units, axis=1)
    ref = model.evaluate(x, yk, batch_size=40, verbose=0, return_dict=True)
    note = ""
    if probs_path:
        tf = TF
        p = tf.constant(model.predict(x, verbose=0))  # a plain tensor: no _keras_logits
        lf = kl if callable(kl) and not isinstance(kl, str) else K.losses.get(kl)
        keras_eval = ref["loss"]
        ref["loss"] = float(tf.reduce_mean(lf(yk, p)))
        if abs(keras_eval - ref["loss"]) < 1e-3 * abs(ref["loss"]):
            raise AssertionError(f"expected Keras's logit recovery to differ; model.evaluate {keras_eval} == {ref['loss']}")
        note = f" (model.evaluate: {keras_eval:.6g}, from the other activation's logits)"
    worst = 0.0
    for k, v in ref.items():
        if k not in got:
            raise AssertionError(f"lockstep printed no {k}: {txt.splitlines()[-1]}")
        err = abs(float(got[k]) - v) / max(abs(v), 1e-3)
        if not err <= RTOL_PRINTED:
            raise AssertionError(f"{k}: lockstep {got[k]} keras {v!r} (rel {err:.3g})")
        worst = max(worst, err)
    return f"{', '.join(f'{k}={v:.6g}' for k, v in ref.items())}; max rel err {worst:.2g}{note}"


def loss_metric_cases():
    three = lambda rng, n: rng.integers(0, 3, size=n)  # noqa: E731
    two = lambda rng, n: rng.integers(0, 2, size=n)  # noqa: E731
    acc = ["accuracy", "sparse_categorical_accuracy"]
    c = {
        "scce_softmax": ("softmax", 3, "sparse_categorical_crossentropy", "sparse_categorical_crossentropy", acc, three),
        "scce_sigmoid_probs": ("sigmoid", 3, "sparse_categorical_crossentropy", "sparse_categorical_crossentropy", acc, three, True),
        "scce_tanh_probs_clipped": ("tanh", 3, "sparse_categorical_crossentropy", "sparse_categorical_crossentropy", acc, three),
        "scce_logits": (None, 3, {"sparse_categorical_crossentropy": {"from_logits": True}},
                        {"SparseCategoricalCrossentropy": {"from_logits": True}}, acc, three),
        "cce_softmax_broadcast_labels": ("softmax", 2, "categorical_crossentropy", "categorical_crossentropy",
                                         ["categorical_accuracy"], two),
        "cce_logits_smoothing": (None, 2, {"categorical_crossentropy": {"from_logits": True, "label_smoothing": 0.1}},
                                 {"CategoricalCrossentropy": {"from_logits": True, "label_smoothing": 0.1}}, ["categorical_accuracy"], two),
        "bce_sigmoid": ("sigmoid", 1, "binary_crossentropy", "binary_crossentropy", ["accuracy", "binary_accuracy"], two),
        "bce_softmax_probs": ("softmax", 1, "binary_crossentropy", "binary_crossentropy", ["binary_accuracy"], two, True),
        "bce_softsign_probs_clipped": ("softsign", 1, "binary_crossentropy", "binary_crossentropy", ["binary_accuracy"], two),
        "cce_sigmoid_probs": ("sigmoid", 3, "categorical_crossentropy", "categorical_crossentropy", ["categorical_accuracy", "accuracy"], three, True),
        "cce_softplus_probs_normalized": ("softplus", 3, "categorical_crossentropy", "categorical_crossentropy", ["categorical_accuracy"], two),
        "bce_logits_smoothing": (None, 1, {"binary_crossentropy": {"from_logits": True, "label_smoothing": 0.3}},
                                 {"BinaryCrossentropy": {"from_logits": True, "label_smoothing": 0.3}}, ["binary_accuracy"], two),
        "bce_sigmoid_smoothing": ("sigmoid", 1, {"binary_crossentropy": {"label_smoothing": 0.2}},
                                  {"BinaryCrossentropy": {"label_smoothing": 0.2}}, ["accuracy"], two),
        "mse": (None, 1, "mean_squared_error", "mean_squared_error", [], three),
        "mse_broadcast": ("tanh", 3, "mean_squared_error", "mean_squared_error", [], two),
    }
    return {f"loss_metric/{k}": (lambda v=v, k=k: eval_case("lm_" + k, *v)) for k, v in c.items()}


# ---------------------------------------------------------------- initializers: distribution match
INITS = ["random_normal", "random_uniform", "truncated_normal", "glorot_normal", "glorot_uniform", "he_normal",
         "he_uniform", "lecun_normal", "lecun_uniform"]


def initializer_case():
    K = tfk()
    d = os.path.join(ARGS.work, "init_stats")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    fan_in, fan_out = 300, 200
    make_data(os.path.join(d, "data.h5"), 4, (15, fan_in // 15), lambda rng, n: rng.integers(0, 2, size=n), 3)
    layers = [dense(fan_out, kernel_initializer=i, name=i) for i in INITS]
    layers += [dense(fan_out, kernel_initializer={"variance_scaling": {"scale": 2.0, "mode": "fan_avg", "distribution": "truncated_normal"}}, name="vs_trunc"),
               dense(fan_out, kernel_initializer={"variance_scaling": {"scale": 0.5, "mode": "fan_out", "distribution": "uniform"}}, name="vs_unif")]
    # Each layer sees (fan_in) inputs: a Functional model with every Dense on the input.
    cfg = {"seed": 3, "data": {"path": "data.h5", "scale": 255},
           "model": {"inputs": [{"input": {"name": "x", "shape": [15, fan_in // 15]}}],
                     "layers": [{"flatten": {"name": "f"}, "inputs": "x"}] + [dict(entry, inputs="f") for entry in layers] + [{"concatenate": {}, "inputs": [list(e.values())[0]["name"] for e in layers]},
                                                                               dense(1, activation="sigmoid", name="out")]},
           "loss": "binary_crossentropy", "optimizer": {"name": "sgd", "learning_rate": 1e-30},
           "train": {"epochs": 1, "batch_size": 4, "verbose": 0}, "checkpoint": {"every_epochs": 0}}
    write_yaml(os.path.join(d, "run.yaml"), cfg)
    run([ARGS.lockstep, "train", os.path.join(d, "run.yaml"), "--run-dir", os.path.join(d, "run")])
    w = read_weights(os.path.join(d, "run", "final.h5"))
    # Seeded Keras draws: the comparison is deterministic.
    keras_inits = {i: K.initializers.get({"class_name": i, "config": {"seed": 1}}) for i in INITS}
    keras_inits["vs_trunc"] = K.initializers.VarianceScaling(2.0, "fan_avg", "truncated_normal", seed=1)
    keras_inits["vs_unif"] = K.initializers.VarianceScaling(0.5, "fan_out", "uniform", seed=1)
    lines = []
    n = fan_in * fan_out
    for name, init in keras_inits.items():
        a = w[name + "/kernel"].astype(np.float64).ravel()
        b = np.asarray(init((fan_in, fan_out)), dtype=np.float64).ravel()
        sb = b.std()
        # mean within 5 standard errors, std within 3%, same support (uniform bounds / truncation at 2 sigma)
        if abs(a.mean()) > 5 * sb / math.sqrt(n):
            raise AssertionError(f"{name}: mean {a.mean():.3g} (keras std {sb:.3g})")
        if abs(a.std() / sb - 1) > 0.03:
            raise AssertionError(f"{name}: std {a.std():.5g} vs keras {sb:.5g}")
        if abs(np.abs(a).max() / np.abs(b).max() - 1) > (0.02 if ("uniform" in name or "trunc" in name or name.startswith("vs_")) else 0.3):
            raise AssertionError(f"{name}: max |w| {np.abs(a).max():.4g} vs keras {np.abs(b).max():.4g}")
        # kurtosis separates normal (3), truncated normal (~2.37) and uniform (1.8)
        ka, kb = np.mean((a - a.mean()) ** 4) / a.var() ** 2, np.mean((b - b.mean()) ** 4) / b.var() ** 2
        if abs(ka - kb) > 0.1:
            raise AssertionError(f"{name}: kurtosis {ka:.3f} vs keras {kb:.3f}")
        lines.append(f"{name} std {a.std():.4g}/{sb:.4g}")
    return f"{len(keras_inits)} initializers (mean, std 3%, bounds, kurtosis): " + "; ".join(lines)


# ---------------------------------------------------------------- dropout: inference only
def dropout_case():
    """A dropout model trained in lockstep: Keras's inference predictions of the exported model equal lockstep's."""
    K = tfk()
    d = os.path.join(ARGS.work, "dropout_inference")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    x, y = make_data(os.path.join(d, "data.h5"), 32, (3, 4), lambda rng, n: rng.integers(0, 3, size=n), 9)
    cfg = {"seed": 5, "data": {"path": "data.h5", "scale": 255},
           "model": {"input_shape": [3, 4], "layers": [{"flatten": {}}, {"dropout": {"rate": 0.3}}, dense(8, activation="selu", kernel_initializer="lecun_normal"),
                                                        {"alpha_dropout": {"rate": 0.2}}, dense(3, activation="softmax")]},
           "loss": "sparse_categorical_crossentropy", "optimizer": "adam", "train": {"epochs": 2, "batch_size": 8, "verbose": 0}}
    write_yaml(os.path.join(d, "run.yaml"), cfg)
    run([ARGS.lockstep, "train", os.path.join(d, "run.yaml"), "--run-dir", os.path.join(d, "run")])
    run([ARGS.lockstep, "export", os.path.join(d, "run", "final.h5"), "--out", os.path.join(d, "m.h5")])
    run([ARGS.lockstep, "predict", os.path.join(d, "run.yaml"), "--checkpoint", os.path.join(d, "run", "final.h5"),
         "--out", os.path.join(d, "pred.h5"), "--split", "test"])
    with h5py.File(os.path.join(d, "pred.h5"), "r") as f:
        pl = np.array(f["probabilities"])
    model = K.models.load_model(os.path.join(d, "m.h5"), compile=False)
    pk = model.predict(x, verbose=0)
    err = float(np.max(np.abs(pl - pk)))
    if not err <= RTOL:
        raise AssertionError(f"predictions differ by {err:.3g}")
    return f"32 predictions, max abs err {err:.2g}"


# ---------------------------------------------------------------- 2 ranks
def two_rank_cases():
    layers = [{"flatten": {}}, {"batch_normalization": {}}, dense(6, activation="elu", kernel_regularizer={"l2": 0.01}),
              dense(3, activation="softmax", kernel_constraint={"max_norm": 1.0})]
    return {
        "ranks2/adam_bn_l2_maxnorm_global_clipnorm": lambda: train_case(
            "r2_adam", layers, {"name": "adam", "learning_rate": 0.02, "global_clipnorm": 0.5}, ranks=2, steps=5),
        "ranks2/sgd_nesterov_clipnorm_schedule": lambda: train_case(
            "r2_sgd", MLP, {"name": "sgd", "learning_rate": 0.3, "momentum": 0.9, "nesterov": True, "clipnorm": 0.1},
            schedule={"name": "exponential_decay", "decay_steps": 2, "decay_rate": 0.5}, ranks=2, steps=4, epochs=2),
    }


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--lockstep", required=True)
    ap.add_argument("--work", default=None)
    ap.add_argument("--only", default="")
    ap.add_argument("--mpirun", default="mpirun")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--graph", dest="eager", action="store_false", help="train_on_batch as a tf.function (default: eagerly, faster for tiny models)")
    ARGS = ap.parse_args()
    tmp = None
    if ARGS.work is None:
        tmp = tempfile.mkdtemp(prefix="golden-")
        ARGS.work = tmp
    os.makedirs(ARGS.work, exist_ok=True)
    cases = {}
    for group in (optimizer_cases, clipping_cases, schedule_cases, regularizer_cases, bn_cases, activation_cases,
                  loss_training_cases, loss_metric_cases):
        cases.update(group())
    cases["initializers/statistics"] = initializer_case
    cases["dropout/inference"] = dropout_case
    if shutil.which(ARGS.mpirun):
        cases.update(two_rank_cases())
    else:
        print(f"note: {ARGS.mpirun} not found: the 2-rank cases are left out")
    passed, failed = 0, []
    t_all = time.time()
    for name, fn in cases.items():
        if ARGS.only and not any(o in name for o in ARGS.only.split(",")):
            continue
        t0 = time.time()
        try:
            msg = fn()
            passed += 1
            print(f"PASS {name}: {msg} ({time.time() - t0:.1f} s)", flush=True)
        except Exception as e:  # noqa: BLE001
            failed.append(name)
            detail = str(e) if isinstance(e, (AssertionError, RuntimeError)) else traceback.format_exc()
            print(f"FAIL {name}: {detail} ({time.time() - t0:.1f} s)", flush=True)
    print(f"{passed} passed, {len(failed)} failed ({time.time() - t_all:.0f} s)")
    if failed:
        print("failed: " + ", ".join(failed))
    if tmp and not ARGS.keep and not failed:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
