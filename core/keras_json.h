// A lockstep Model as Keras's JSON (`model.to_json()`), for TensorBoard's Graphs dashboard (the
// `keras` tag of core/tensorboard.h) and whatever else wants a model_config.
//
// The form is tf.keras 2.12's legacy one (../shared/reference/keras-files.md §2): Sequential
// {"name", "layers"} with an explicit InputLayer ("<first layer>_input") and `batch_input_shape` on the
// first real layer; Functional {"name", "trainable", "layers", "input_layers", "output_layers"} with
// list-form inbound_nodes ([[layer, node_index, tensor_index, {}], ...] per call) in model.layers()
// order. Printed as Python's json.dumps does (", " and ": ", ASCII with \uXXXX escapes).
//
// What is in each layer's config: name, trainable, dtype ("float32"), and what the Layer's public
// interface tells: InputLayer batch_input_shape/sparse/ragged; Flatten data_format; Dense units,
// activation, use_bias; Activation-type layers (Activation, ReLU, ELU, LeakyReLU, Softmax) the
// activation; BatchNormalization center/scale; Reshape target_shape. Missing (private to the layers):
// initializers, regularizers, constraints, Dropout rates, LeakyReLU/ELU alpha, BN axis/momentum/
// epsilon, Concatenate axis, PReLU shared_axes. TensorBoard's graph view needs only class_name,
// config.name and the wiring, which are complete; a Keras loader would fall back to its defaults for
// the missing keys, so this is not (yet) the .h5 exporter's model_config.
#pragma once

#include <string>

#include "core/model.h"

namespace lockstep {

// {"class_name": "Sequential"|"Functional", "config": {...}}
std::string keras_model_config(const Model& model);
// model.to_json(): {"class_name", "config", "keras_version", "backend"}.
std::string keras_model_json(const Model& model, const std::string& keras_version = "2.12.0",
                             const std::string& backend = "tensorflow");
// A string as a JSON literal, as Python's json.dumps(ensure_ascii=True) writes it.
std::string json_quote(const std::string& s);

}  // namespace lockstep
