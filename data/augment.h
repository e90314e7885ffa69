// Training-time augmentation (`data.augment`): a random crop of the zero-padded image and a random
// horizontal flip, as Keras's RandomCrop-after-ZeroPadding2D / RandomFlip("horizontal") and
// torchvision's RandomCrop(padding=p) / RandomHorizontalFlip() do for CIFAR-10.
//
// Draw. Sample i of epoch e gets (dy, dx, flip) from the Philox stream
// {seed, mix(mix(kAugmentTag, e), i)}, block 0: dy = floor(w0 (2p+1) / 2^32), dx likewise from w1,
// flip = the top bit of w2. i is the sample's index in the split (for pairs: each image's own index),
// so a draw is a pure function of (seed, epoch, index): identical on any rank count, and a run resumed
// mid-epoch replays it. The words are the same whichever keys are on (turning the crop off keeps the
// flips). A sample that appears twice in an epoch (LastBatch::Pad, or an image in two pairs) gets the
// same transform both times.
//
// Transform. On the preprocessed float image [H, W] or [H, W, C] (channels last): pad every side with
// p zeros (0 after scaling and standardization, i.e. the zero of the model's input, as Keras and
// torchvision pad the tensor they are given), take the H x W window at (dy, dx) of the padded image,
// then, when flip, reverse the columns (each pixel's channels keep their order). dy = dx = p is the
// identity crop. Each output row is one memcpy of its in-image span plus zero fills.
#pragma once

#include <cstdint>
#include <string>

namespace lockstep::data {

struct AugmentSpec {
  int64_t crop_padding = -1;    // random_crop.padding; -1: no random crop
  bool horizontal_flip = false;
  // "FILE:LINE:COL: data.augment.random_crop.padding" of the run file, for the check that needs the
  // image size (open_dataset: padding < min(H, W)); empty when the spec was built in code.
  std::string padding_where;
  bool crops() const { return crop_padding >= 0; }
  bool active() const { return crops() || horizontal_flip; }
};

struct AugmentDraw {
  int64_t dy = 0, dx = 0;  // window offsets in the padded image, in [0, 2p]; 0 and 0 (the image itself) when no crop
  bool flip = false;
};

// Applies one spec to samples of one shape. Thread-safe (const after construction).
class Augmenter {
 public:
  // ConfigError when the padding is not below min(h, w) (naming spec.padding_where when known).
  Augmenter(AugmentSpec spec, int64_t h, int64_t w, int64_t c, uint64_t seed);

  AugmentDraw draw(int64_t epoch, int64_t index) const;
  // dst = transform(src) for one sample of h*w*c floats; src and dst must not overlap.
  void apply(const AugmentDraw& d, const float* src, float* dst) const;
  // dst[k] = transform of src[k] with draw(epoch, index[k]), for n samples.
  void apply_batch(int64_t epoch, const int64_t* index, int64_t n, const float* src, float* dst) const;

  const AugmentSpec& spec() const { return spec_; }

 private:
  AugmentSpec spec_;
  int64_t h_, w_, c_;
  uint64_t seed_;
};

// Refuses a spec that cannot apply to images of h x w (ConfigError naming the key and the run file).
void check_augment(const AugmentSpec& spec, int64_t h, int64_t w, const std::string& what);

}  // namespace lockstep::data
