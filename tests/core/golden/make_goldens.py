#!/usr/bin/env python3
"""Regenerates the model.summary() goldens that tests/core/summary_test.cpp compares
lockstep::functional_summary() with, byte for byte.

Reference: tf_keras (tf.keras 2.x), the Keras lockstep follows. Set-up and run:

    python3 -m venv /work/venv-keras
    /work/venv-keras/bin/pip install tensorflow-cpu tf-keras
    /work/venv-keras/bin/python tests/core/golden/make_goldens.py

The goldens in this folder were made with tf_keras 2.21.0 on tensorflow-cpu 2.21.0 (CPython 3.11);
versions.txt records what the last run used. Each golden is exactly the lines model.summary() hands
to print_fn (default line_length), each ending in "\n" (trailing spaces included).
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def save(model, filename):
    lines = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
    text = "".join(line + "\n" for line in lines)
    with open(os.path.join(HERE, filename), "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    print(f"{filename}: total {model.count_params()}")
    return text


def seed_exercise():
    # (a) tf_keras 2.21.0 / tensorflow 2.21.0: the seed exercise. Two unnamed inputs (input_1,
    # input_2 in a fresh session), three Dense(100, elu) per tower applied to the rank-3 inputs
    # (no Flatten), Concatenate(axis=1), Dense(100, elu), Dense(1, sigmoid). Total 56,401.
    keras.backend.clear_session()
    in_a = keras.Input((28, 28))
    in_b = keras.Input((28, 28))
    a, b = in_a, in_b
    for _ in range(3):
        a = keras.layers.Dense(100, activation="elu")(a)
    for _ in range(3):
        b = keras.layers.Dense(100, activation="elu")(b)
    x = keras.layers.Concatenate(axis=1)([a, b])
    x = keras.layers.Dense(100, activation="elu")(x)
    out = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs=[in_a, in_b], outputs=out)
    assert model.count_params() == 56401, model.count_params()
    return save(model, "functional_seed_exercise.txt")


def book_comparison():
    # (b) tf_keras 2.21.0 / tensorflow 2.21.0: the book's comparison network. Two (28, 28) inputs,
    # each tower Flatten + 5 Dense(100, elu, he_normal), Concatenate, Dense(10, elu),
    # Dense(1, sigmoid).
    keras.backend.clear_session()
    in_a = keras.Input((28, 28))
    in_b = keras.Input((28, 28))
    towers = []
    for inp in (in_a, in_b):
        x = keras.layers.Flatten()(inp)
        for _ in range(5):
            x = keras.layers.Dense(100, activation="elu", kernel_initializer="he_normal")(x)
        towers.append(x)
    x = keras.layers.Concatenate()(towers)
    x = keras.layers.Dense(10, activation="elu")(x)
    out = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs=[in_a, in_b], outputs=out)
    return save(model, "functional_book_comparison.txt")


def shared_two_outputs():
    # (c) tf_keras 2.21.0 / tensorflow 2.21.0: one Dense object called on two inputs ("dense[0][0]",
    # "dense[1][0]"), an Add merge, BatchNormalization (non-trainable moving statistics), two
    # outputs, one with a name longer than the first column (wraps).
    keras.backend.clear_session()
    in_a = keras.Input((8,))
    in_b = keras.Input((8,))
    shared = keras.layers.Dense(16, activation="relu")
    x = keras.layers.Add()([shared(in_a), shared(in_b)])
    x = keras.layers.BatchNormalization()(x)
    out_1 = keras.layers.Dense(1, name="regression_output")(x)
    out_2 = keras.layers.Dense(3, activation="softmax", name="a_very_long_classification_head_name")(x)
    model = keras.Model(inputs=[in_a, in_b], outputs=[out_1, out_2], name="shared_two_outputs")
    return save(model, "functional_shared_two_outputs.txt")


def merges():
    # (d) tf_keras 2.21.0 / tensorflow 2.21.0: Reshape, Dense on rank-3 tensors and the Subtract,
    # Multiply, Average (three inbound tensors: wraps over three lines), Maximum and Minimum merges.
    keras.backend.clear_session()
    in_a = keras.Input((12,))
    in_b = keras.Input((3, 5))
    r = keras.layers.Reshape((3, 4))(in_a)
    d1 = keras.layers.Dense(5)(r)
    d2 = keras.layers.Dense(5)(r)
    sub = keras.layers.Subtract()([d1, d2])
    mul = keras.layers.Multiply()([d1, in_b])
    avg = keras.layers.Average()([sub, mul, in_b])
    mx = keras.layers.Maximum()([avg, d1])
    mn = keras.layers.Minimum()([mx, d2])
    out = keras.layers.Dense(1)(mn)
    model = keras.Model(inputs=[in_a, in_b], outputs=out, name="merges")
    return save(model, "functional_merges.txt")


def shape_forms():
    # (e) tf_keras 2.21.0 / tensorflow 2.21.0: the Output Shape column's other forms. A layer with
    # three outputs (a list, wrapping after each "),"), a shared layer whose calls give different
    # shapes ("multiple"), a rank-0 per-sample output ("(None,)"), inbound tensors of a multi-output
    # layer ("split[0][2]").
    keras.backend.clear_session()
    in_a = keras.Input((1000,))
    in_b = keras.Input((5, 4))
    parts = keras.layers.Lambda(lambda x: [x[:, :500], x[:, 500:996], x[:, 996:]], name="split")(in_a)
    shared = keras.layers.Dense(3, name="shared")
    y_a = shared(parts[2])
    y_b = shared(in_b)
    total = keras.layers.Lambda(lambda x: tf.reduce_sum(x, axis=1), name="scalar")(y_a)
    cat = keras.layers.Concatenate(name="cat")([parts[0], parts[1]])
    model = keras.Model(inputs=[in_a, in_b], outputs=[total, y_b, cat], name="shape_forms")
    return save(model, "functional_shape_forms.txt")


def sequential_mlp():
    # tf_keras 2.21.0 / tensorflow 2.21.0: README's Sequential MLP, for comparison with
    # lockstep's Model::summary() (core/model.cpp); not compared by summary_test.
    keras.backend.clear_session()
    model = keras.Sequential([
        keras.layers.Flatten(input_shape=[28, 28]),
        keras.layers.Dense(300, activation="relu"),
        keras.layers.Dense(100, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    return save(model, "sequential_mlp.txt")


def main():
    seed_exercise()
    book_comparison()
    shared_two_outputs()
    merges()
    shape_forms()
    sequential_mlp()
    with open(os.path.join(HERE, "versions.txt"), "w", encoding="utf-8") as f:
        f.write(f"tf_keras {keras.__version__}\ntensorflow {tf.__version__}\n"
                f"python {sys.version.split()[0]}\n")


if __name__ == "__main__":
    main()
