#include "data/augment.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/rng.h"

namespace lockstep::data {

namespace {
constexpr uint64_t kAugmentTag = 0x4155474d454e54ull;  // "AUGMENT"

// Uniform in [0, n) from 32 random bits: floor(w * n / 2^32) (bias below n / 2^32).
int64_t below(uint32_t w, int64_t n) {
  return static_cast<int64_t>((static_cast<uint64_t>(w) * static_cast<uint64_t>(n)) >> 32);
}
}  // namespace

void check_augment(const AugmentSpec& spec, int64_t h, int64_t w, const std::string& what) {
  if (!spec.crops()) return;
  const int64_t m = std::min(h, w);
  if (spec.crop_padding < m) return;
  const std::string where = spec.padding_where.empty() ? std::string("data.augment.random_crop.padding")
                                                       : spec.padding_where;
  throw ConfigError(str_cat(where, ": padding ", spec.crop_padding, " must be below the image's smaller side (",
                            what, " holds ", h, "x", w, " images, so at most ", m - 1,
                            "); a larger padding lets a crop hold no image at all"));
}

Augmenter::Augmenter(AugmentSpec spec, int64_t h, int64_t w, int64_t c, uint64_t seed)
    : spec_(std::move(spec)), h_(h), w_(w), c_(c), seed_(seed) {
  LS_CHECK(h_ >= 1 && w_ >= 1 && c_ >= 1, "augment: bad sample shape ", h_, "x", w_, "x", c_);
  check_augment(spec_, h_, w_, "the split");
}

AugmentDraw Augmenter::draw(int64_t epoch, int64_t index) const {
  const rng::Stream s{seed_,
                      rng::mix(rng::mix(kAugmentTag, static_cast<uint64_t>(epoch)), static_cast<uint64_t>(index))};
  const auto wd = s.block(0);
  AugmentDraw d;
  if (spec_.crops()) {
    const int64_t span = 2 * spec_.crop_padding + 1;
    d.dy = below(wd[0], span);
    d.dx = below(wd[1], span);
  } else {
    d.dy = d.dx = 0;  // with p = 0 the window at (0, 0) is the image itself
  }
  d.flip = spec_.horizontal_flip && (wd[2] >> 31) != 0;
  return d;
}

void Augmenter::apply(const AugmentDraw& d, const float* __restrict src, float* __restrict dst) const {
  const int64_t p = spec_.crops() ? spec_.crop_padding : 0;
  const int64_t sy = d.dy - p, sx = d.dx - p;  // output (i, j) reads input (i + sy, j + sx)
  const int64_t row = w_ * c_;
  // Columns j in [j0, j1) read inside the image; the rest are padding.
  const int64_t j0 = std::clamp<int64_t>(-sx, 0, w_), j1 = std::clamp<int64_t>(w_ - sx, 0, w_);
  for (int64_t i = 0; i < h_; ++i) {
    float* out = dst + i * row;
    const int64_t r = i + sy;
    if (r < 0 || r >= h_ || j0 >= j1) {
      std::memset(out, 0, sizeof(float) * row);
      continue;
    }
    if (j0 > 0) std::memset(out, 0, sizeof(float) * j0 * c_);
    std::memcpy(out + j0 * c_, src + r * row + (j0 + sx) * c_, sizeof(float) * (j1 - j0) * c_);
    if (j1 < w_) std::memset(out + j1 * c_, 0, sizeof(float) * (w_ - j1) * c_);
  }
  if (!d.flip) return;
  for (int64_t i = 0; i < h_; ++i) {
    float* out = dst + i * row;
    for (int64_t a = 0, b = w_ - 1; a < b; ++a, --b)
      for (int64_t k = 0; k < c_; ++k) std::swap(out[a * c_ + k], out[b * c_ + k]);
  }
}

void Augmenter::apply_batch(int64_t epoch, const int64_t* index, int64_t n, const float* src, float* dst) const {
  const int64_t d = h_ * w_ * c_;
  for (int64_t k = 0; k < n; ++k) apply(draw(epoch, index[k]), src + k * d, dst + k * d);
}

}  // namespace lockstep::data
