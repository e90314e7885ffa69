// HDF5 files of a model's weights and training state (the checkpoint layout: docs/checkpoints.md).
//
//   /                         attrs: format = "lockstep-checkpoint", format_version = 2,
//                                    model_name, run_config (the resolved run file, YAML)
//   /model_weights            attrs: layer_names (every layer, model order), backend, keras_version
//     /<layer>                attrs: weight_names, e.g. ["dense/kernel:0", "dense/bias:0"]
//       /<layer>/<weight>:0   float32 datasets in Keras's shapes (Dense kernel (in, out))
//   /optimizer_weights        one float32 dataset per optimizer state tensor, attrs: name, iterations
//   /training_state           scalar attributes (epoch, step, seed, learning rate, ...) and string
//                             attributes (history_csv); /training_state/tensors: callback tensors
//                             (EarlyStopping's best weights)
//   root attrs checksum_crc32 (CRC-32 of every dataset's float32 bytes, in file order, then of run_config
//   and the training_state attributes in name order; format 1 files: datasets only) and
//   complete = 1, written last (the commit marker)
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
  std::map<std::string, std::string> strings;                // training_state string attributes
  std::vector<std::pair<std::string, Tensor>> tensors;       // training_state/tensors
};

void save_checkpoint(const std::string& path, const Model& model, const CheckpointContents& extra);
// Loads weights into `model` (shapes must match: CheckpointError naming the layer and weight otherwise)
// and returns the rest. Optimizer tensors are returned by name for the optimizer to copy. The file is
// opened read-only; a file without the commit marker or whose checksum does not match is refused.
// `only_layers`: load just these layers of `model` (each from the file's layer of the same name).
CheckpointContents load_checkpoint(const std::string& path, Model& model, const std::vector<int>* only_layers = nullptr);
// Predictions file (`lockstep predict --out`): HDF5 with float32 `probabilities` [N, K], `std` [N, K]
// (MC dropout only), int32 `predictions` [N] (argmax) and `labels` [N]; a CSV when `path` ends in
// .csv (index,label,prediction,p0..pK-1[,std0..stdK-1]). Written atomically.
void save_predictions(const std::string& path, const Tensor& probabilities, const Tensor& stddev,
                      const std::vector<int32_t>& labels);
// The checkpoint's resolved run file, without loading anything else.
std::string checkpoint_run_config(const std::string& path);

}  // namespace lockstep
