// A lockstep Model as Keras's JSON (`model.to_json()`): the model_config of the Keras .h5 exporter
// (core/keras_io.h) and of TensorBoard's Graphs dashboard (the `keras` tag of core/tensorboard.h).
//
// The form is the legacy one every tf.keras 2.x and Keras 3 loader reads
// (../shared/reference/keras-files.md §2, §5.2): Sequential {"name", "layers"} with an explicit
// InputLayer ("<first layer>_input") and no `batch_input_shape` on the next layer; Functional
// {"name", "trainable", "layers", "input_layers", "output_layers"} with list-form inbound_nodes
// ([[layer, node_index, tensor_index, {}], ...] per call) in model.layers() order (Keras's). Printed as
// Python's json.dumps does (", " and ": ", ASCII with \uXXXX escapes).
//
// Each layer's config is complete (§2.4/§2.5): it is made from the layer's run-file arguments
// (Layer::args()) with Keras's defaults for the rest: initializers, regularizers, constraints (legacy
// {"class_name", "config"} form), rates, alphas, BN axis (a list of positive axes, as after build),
// momentum and epsilon, Concatenate's axis, PReLU's shared_axes. Float hyper-parameters that Keras
// casts to float32 (regularizer factors, LeakyReLU/ELU alpha) are written float32-cast.
//
// Convolutional layers (channels_last): Conv2D and DepthwiseConv2D with kernel_size/strides/
// dilation_rate as [h, w], padding, groups (Conv2D only: Keras 3's DepthwiseConv2D refuses the key);
// MaxPooling2D/AveragePooling2D (strides default to pool_size); Global*Pooling2D with keepdims;
// ZeroPadding2D's padding as [[top, bottom], [left, right]]; SpatialDropout2D with the keys Keras 3
// accepts (name, dtype, rate, data_format, seed: no `trainable`, no `noise_shape`).
// A layer kind without an entry here is refused (UserError naming the layer and its key), never
// written with the base keys only.
//
// Layers without a Keras class: `rrelu` is written as LeakyReLU with alpha = (lower + upper) / 2 (its
// inference function; its random training slopes are lost), `mc_dropout`/`mc_alpha_dropout` as
// Dropout/AlphaDropout (Keras then drops only in training; the book's MCDropout is a custom class).
// `keras_export_notes` lists these substitutions for a model.
#pragma once

#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "core/model.h"

namespace lockstep {

// {"class_name": "Sequential"|"Functional", "config": {...}}
std::string keras_model_config(const Model& model);
nlohmann::ordered_json keras_model_config_json(const Model& model);
// One layer's {"class_name", "config"} (config complete, as above). UserError for what Keras cannot
// express (e.g. a Dense activation {leaky_relu: {alpha}} other than Keras's function default) and for
// a layer kind this exporter does not know.
nlohmann::ordered_json keras_layer_json(const Model& model, const Layer& layer);
// Human-readable notes about layers exported as their nearest Keras equivalent (empty: none).
std::vector<std::string> keras_export_notes(const Model& model);
// model.to_json(): {"class_name", "config", "keras_version", "backend"}.
std::string keras_model_json(const Model& model, const std::string& keras_version = "2.12.0",
                             const std::string& backend = "tensorflow");
// A string as a JSON literal, as Python's json.dumps(ensure_ascii=True) writes it.
std::string json_quote(const std::string& s);
// Any JSON value as Python's json.dumps writes it (", " / ": " separators, ensure_ascii, floats in
// shortest round-trip form with a ".0" on integral values).
std::string python_json_dump(const nlohmann::ordered_json& j);

}  // namespace lockstep
