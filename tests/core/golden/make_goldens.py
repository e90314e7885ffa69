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


def fashion_mnist_cnn():
    # tf_keras 2.21.0 / tensorflow 2.21.0: launch/configs/fashion_mnist_cnn.yaml, as HML2 ch. 14 writes
    # it (DefaultConv2D = partial(Conv2D, kernel_size=3, activation="relu", padding="SAME")).
    # Total 1,413,834.
    keras.backend.clear_session()

    def conv(filters, kernel_size=3, **kwargs):
        return keras.layers.Conv2D(filters, kernel_size, activation="relu", padding="SAME", **kwargs)

    model = keras.Sequential([
        conv(64, 7, input_shape=[28, 28, 1]),
        keras.layers.MaxPooling2D(pool_size=2),
        conv(128),
        conv(128),
        keras.layers.MaxPooling2D(pool_size=2),
        conv(256),
        conv(256),
        keras.layers.MaxPooling2D(pool_size=2),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(10, activation="softmax"),
    ])
    assert model.count_params() == 1413834, model.count_params()
    return save(model, "sequential_fashion_mnist_cnn.txt")


def cifar10_cnn():
    # tf_keras 2.21.0 / tensorflow 2.21.0: launch/configs/cifar10_cnn.yaml. [Conv2D(no bias), BN, ReLU]
    # x 2 per width 32/64/128, MaxPooling2D between, GlobalAveragePooling2D, Dropout, Dense.
    # Total 289,642, 896 non-trainable.
    keras.backend.clear_session()
    layers = []
    for filters in (32, 64, 128):
        for _ in range(2):
            kwargs = {"input_shape": [32, 32, 3]} if not layers else {}
            layers += [
                keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
                                    **kwargs),
                keras.layers.BatchNormalization(),
                keras.layers.Activation("relu"),
            ]
        if filters != 128:
            layers.append(keras.layers.MaxPooling2D())
    layers += [
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dropout(0.3),
        keras.layers.Dense(10, activation="softmax"),
    ]
    model = keras.Sequential(layers)
    assert model.count_params() == 289642, model.count_params()
    return save(model, "sequential_cifar10_cnn.txt")


def cifar10_resnet20():
    # tf_keras 2.21.0 / tensorflow 2.21.0: launch/configs/cifar10_resnet20.yaml, the layers made in the
    # run file's order with its names (Keras's CIFAR-10 ResNet example, resnet_v1 depth 20).
    # Total 274,442, 1,376 non-trainable.
    keras.backend.clear_session()
    reg = keras.regularizers.l2(1e-4)

    def conv(name, filters, kernel_size=3, strides=1):
        return keras.layers.Conv2D(filters, kernel_size, strides=strides, padding="same",
                                   kernel_initializer="he_normal", kernel_regularizer=reg, name=name)

    def bn(name):
        return keras.layers.BatchNormalization(name=name)

    def relu(name):
        return keras.layers.Activation("relu", name=name)

    image = keras.Input((32, 32, 3), name="image")
    x = relu("relu_stem")(bn("bn_stem")(conv("conv_stem", 16)(image)))
    for stack, filters in enumerate((16, 32, 64), start=1):
        for block in range(1, 4):
            p = f"s{stack}b{block}_"
            strides = 2 if stack > 1 and block == 1 else 1
            y = relu(p + "relu1")(bn(p + "bn1")(conv(p + "conv1", filters, strides=strides)(x)))
            y = bn(p + "bn2")(conv(p + "conv2", filters)(y))
            shortcut = x
            if strides > 1:
                shortcut = conv(p + "shortcut", filters, kernel_size=1, strides=strides)(x)
                y = keras.layers.Add(name=p + "add")([shortcut, y])
            else:
                y = keras.layers.Add(name=p + "add")([shortcut, y])
            x = relu(p + "out")(y)
    x = keras.layers.AveragePooling2D(pool_size=8, name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    out = keras.layers.Dense(10, activation="softmax", kernel_initializer="he_normal", name="logits")(x)
    model = keras.Model(inputs=image, outputs=out, name="resnet20")
    assert model.count_params() == 274442, model.count_params()
    non_trainable = sum(int(tf.size(w)) for w in model.non_trainable_weights)
    assert non_trainable == 1376, non_trainable
    return save(model, "functional_cifar10_resnet20.txt")


def main():
    seed_exercise()
    book_comparison()
    shared_two_outputs()
    merges()
    shape_forms()
    sequential_mlp()
    fashion_mnist_cnn()
    cifar10_cnn()
    cifar10_resnet20()
    with open(os.path.join(HERE, "versions.txt"), "w", encoding="utf-8") as f:
        f.write(f"tf_keras {keras.__version__}\ntensorflow {tf.__version__}\n"
                f"python {sys.version.split()[0]}\n")


if __name__ == "__main__":
    main()
