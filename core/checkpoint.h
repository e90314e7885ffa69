// HDF5 files of a model's weights and training state (the checkpoint layout; README "Checkpoint layout").
//
//   /                         attrs: format = "lockstep-checkpoint", format_version = 1,
//                                    model_name, run_config (the resolved run file, YAML)
//   /model_weights            attrs: layer_names (every layer, model order), backend, keras_version
//     /<layer>                attrs: weight_names, e.g. ["dense/kernel:0", "dense/bias:0"]
//       /<layer>/<weight>:0   float32 datasets in Keras's shapes (Dense kernel (in, out))
//   /optimizer_weights        one float32 dataset per optimizer state tensor, attrs: name, iterations
//   /training_state           scalar attributes (epoch, step, seed, learning rate, ...)
//
// Writes are atomic: FILE.tmp, flushed and fsync'ed, then renamed over FILE and the directory fsync'ed
// (reliability/FINDINGS.md §1c: the only protocol that survived SIGKILL in every trial).
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/model.h"

namespace lockstep {

struct CheckpointContents {
  std::string run_config;                                    // resolved YAML
  std::vector<std::pair<std::string, Tensor>> optimizer;     // name -> state tensor (CPU)
  std::map<std::string, double> state;                       // training_state attributes
};

void save_checkpoint(const std::string& path, const Model& model, const CheckpointContents& extra);
// Loads weights into `model` (shapes must match: CheckpointError naming the layer and weight otherwise)
// and returns the rest. Optimizer tensors are returned by name for the optimizer to copy.
CheckpointContents load_checkpoint(const std::string& path, Model& model);

}  // namespace lockstep
