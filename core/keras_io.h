// Keras legacy full-model .h5 files in and out (../shared/reference/keras-files.md; user guide
// docs/keras.md).
//
// Export: a lockstep model (+ its run file's loss/metrics/optimizer and the optimizer's state) as the
// file `model.save("x.h5")` writes, in the §5.2 profile: root keras_version/backend (vlen UTF-8),
// model_config/training_config (vlen ASCII), model_weights with 1-D fixed-length NULLPAD ASCII
// layer_names/weight_names (float64 (0,) when empty), float32 datasets at <layer>/<layer>/<w>:0,
// optimizer_weights in the legacy OptimizerV2 names and order (<Opt>/iter:0 int64 first).
//
// Import: model_config (or a model.to_json() file) translated into a run-file `model:` section
// (Sequential or Functional form), then built by Model::from_config; weights matched by layer name
// (weight by its last path component, shapes checked). What lockstep cannot express is refused with a
// UserError naming the file, the layer and the feature.
#pragma once

#include <yaml-cpp/yaml.h>

#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "core/model.h"

namespace lockstep {

// Write `model` as a Keras .h5. `run` (may be undefined) supplies loss/metrics/optimizer for
// training_config; `state` (may be null) the optimizer tensors and scalars ("optimizer.iterations").
void write_keras_h5(const std::string& path, const Model& model, const ConfigNode& run, const CheckpointContents* state);
// `lockstep export`: a lockstep checkpoint -> a Keras .h5. Returns notes (layers exported as their
// nearest Keras equivalent) for the user.
std::vector<std::string> export_checkpoint_to_keras(const std::string& checkpoint, const std::string& out);

// Whether `path` is a Keras file (an HDF5 file that is not a lockstep checkpoint, or a .json).
bool is_keras_file(const std::string& path);
// The run-file `model:` section for a Keras .h5 (model_config) or model.to_json() file.
YAML::Node keras_model_yaml(const std::string& path);
// Load the weights of `model`'s layers (all, or `only_layers`) from a Keras .h5 (full model or
// save_weights file), by layer name. CheckpointError naming the file and layer on any mismatch.
void load_keras_weights(const std::string& path, Model& model, const std::vector<int>* only_layers = nullptr);
// `model: {from_keras: FILE[, weights: W.h5]}` (paths relative to the run file's folder): the
// translated `model:` node and the weights file (the .h5 itself, or `weights:`; empty for a .json
// without weights). False when `model` has no from_keras.
bool resolve_from_keras(const ConfigNode& model, YAML::Node* translated, std::string* weights);

}  // namespace lockstep
