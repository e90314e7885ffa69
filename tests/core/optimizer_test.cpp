// Optimizers against updates computed by hand in double precision from keras-semantics §5 (not by
// calling the ops), gradient clipping (§4), the legacy `decay`, frozen layers, the fused whole-arena
// path against the per-weight path, the state round trip, and the model's regularization penalties
// and max-norm constraints (§7.1, §7.5).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>

#include "comm/local_communicator.h"
#include "core/error.h"
#include "core/optimizers.h"
#include "core/update_step.h"
#include "tests/core/test_util.h"

namespace lockstep::test {
namespace {

using Vec = std::vector<double>;

std::unique_ptr<Optimizer> opt_from_yaml(const std::string& text) {
  ConfigNode cfg = load_config_string("optimizer: " + text, "run.yaml");
  return Optimizer::from_config(cfg["optimizer"]);
}

// The trainable weights' values (or gradients), concatenated in weight_refs order.
Vec flat(const Model& m, bool grads) {
  Vec out;
  for (const WeightRef& r : m.trainable_weights()) {
    Vec v = (grads ? r.weight->grad : r.weight->value).to_double_vector();
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}
void set_flat(const Model& m, const Vec& v, bool grads) {
  size_t off = 0;
  for (const WeightRef& r : m.trainable_weights()) {
    const Tensor& t = grads ? r.weight->grad : r.weight->value;
    set_values(t, Vec(v.begin() + long(off), v.begin() + long(off) + t.numel()));
    off += size_t(t.numel());
  }
  ASSERT_EQ(off, v.size());
}

// |got - want| <= rtol·(|want| + the tensor's largest |want|): relative to the tensor's scale, so that
// elements an update brought close to zero by cancellation are held to the precision of the terms
// that cancelled (float32 rounds those at ~6e-8 of their size).
void expect_close(const Vec& got, const Vec& want, double rtol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double scale = 0;
  for (double x : want) scale = std::max(scale, std::abs(x));
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_LE(std::abs(got[i] - want[i]), rtol * (std::abs(want[i]) + scale))
        << what << "[" << i << "]: got " << got[i] << ", want " << want[i];
}

// The float32 kernels see the hyper-parameters (and the per-step coefficients such as Adam's alpha_t)
// rounded to float32, as Keras's float32 variables do: 1 - float(0.999) is 1e-3·(1 + 1.3e-5), far
// beyond the tolerance. The reference rounds them the same way when checking a float32 model.
bool g_f32 = false;
double hp(double x) { return g_f32 ? double(float(x)) : x; }

// Gradients for step k (0-based): a mix of signs and magnitudes, one element always exactly 0, and
// steps whose scale drops (so that Adam's v falls below its maximum, which amsgrad keeps).
Vec grads_for_step(int k, size_t n) {
  static const double base[] = {0.3, -1.2, 0.05, 2.0, -0.4, 0.0, 0.9, -0.01, 1.7, -0.6};
  static const double scale[] = {1.0, 0.05, -1.5, 0.02, 0.7, -0.3, 1.1};
  Vec g(n);
  for (size_t i = 0; i < n; ++i) {
    if (i % 10 == 5) continue;
    g[i] = base[i % 10] * scale[k % 7] + 0.1 * std::sin(double(i) + 0.7 * double(k));
  }
  return g;
}

const Vec kW0 = {0.5, -0.3, 0.8, 0.1, -0.7, 0.2, 0.05, -0.02};  // dense 3→2: kernel [3,2], bias [2]

// A reference optimizer over the concatenated trainable elements: slot vectors in Keras's slot order.
struct Reference {
  using Step = std::function<void(int64_t, Vec&, const Vec&, std::vector<Vec>&, double&)>;
  Reference() = default;
  Reference(std::vector<std::string> names, std::vector<double> init, Step f, std::string scalar_key = "",
            double scalar_init = 1.0)
      : slot_names(std::move(names)), slot_init(std::move(init)), step(std::move(f)),
        scalar_name(std::move(scalar_key)), scalar(scalar_init) {}
  std::vector<std::string> slot_names;
  std::vector<double> slot_init;
  // (t = iterations + 1, w, g, slots, scalar such as Nadam's momentum cache)
  std::function<void(int64_t, Vec&, const Vec&, std::vector<Vec>&, double&)> step;
  std::string scalar_name;  // "" when none
  double scalar = 1.0;
};

void check_against_reference(const std::string& opt_yaml, Reference ref, DType dt, double rtol, int steps = 5) {
  SCOPED_TRACE(opt_yaml + (dt == DType::F32 ? " (float32)" : " (float64)"));
  ASSERT_EQ(g_f32, dt == DType::F32) << "build the reference after setting g_f32";
  auto m = one_layer("[3]", "dense: {units: 2}", dt);
  const std::vector<WeightRef> refs = m->trainable_weights();
  ASSERT_EQ(refs.size(), 2u);
  Vec w = kW0;
  set_flat(*m, w, false);
  w = flat(*m, false);  // as stored (float32 rounding)
  auto opt = opt_from_yaml(opt_yaml);
  opt->bind(*m);
  std::vector<Vec> slots;
  for (double init : ref.slot_init) slots.push_back(Vec(w.size(), init));
  for (int k = 0; k < steps; ++k) {
    Vec g = grads_for_step(k, w.size());
    set_flat(*m, g, true);
    g = flat(*m, true);
    ref.step(k + 1, w, g, slots, ref.scalar);
    opt->apply(*m);
    EXPECT_EQ(opt->iterations(), k + 1);
    const std::string after = " after step " + std::to_string(k + 1);
    expect_close(flat(*m, false), w, rtol, "weights" + after);
    const auto st = opt->state();
    ASSERT_EQ(st.size(), ref.slot_names.size() * refs.size());
    for (size_t s = 0; s < ref.slot_names.size(); ++s) {
      size_t off = 0;
      for (size_t j = 0; j < refs.size(); ++j) {
        const auto& [name, t] = st[s * refs.size() + j];
        EXPECT_EQ(name, opt->name() + "/dense/" + refs[j].weight->name + "/" + ref.slot_names[s] + ":0");
        Vec got = t.to_double_vector();
        Vec want(slots[s].begin() + long(off), slots[s].begin() + long(off + got.size()));
        expect_close(got, want, rtol, name + after);
        off += got.size();
      }
    }
    auto sc = opt->scalar_state();
    EXPECT_EQ(sc.at("iterations"), double(k + 1));
    if (!ref.scalar_name.empty()) {
      ASSERT_TRUE(sc.count(ref.scalar_name));
      EXPECT_NEAR(sc.at(ref.scalar_name), ref.scalar, 1e-15) << ref.scalar_name << after;
    } else {
      EXPECT_EQ(sc.size(), 1u);
    }
  }
}

// ---- the reference update rules (keras-semantics §5), written from the spec -----------------------
Reference sgd_ref(double lr) {
  lr = hp(lr);
  return {{}, {}, [=](int64_t, Vec& w, const Vec& g, std::vector<Vec>&, double&) {
            for (size_t i = 0; i < w.size(); ++i) w[i] = w[i] - lr * g[i];
          }};
}
Reference momentum_ref(double lr, double mu, bool nesterov) {
  lr = hp(lr), mu = hp(mu);
  return {{"momentum"}, {0.0}, [=](int64_t, Vec& w, const Vec& g, std::vector<Vec>& s, double&) {
            Vec& v = s[0];
            for (size_t i = 0; i < w.size(); ++i) {
              v[i] = mu * v[i] - lr * g[i];  // the velocity contains lr
              w[i] = nesterov ? w[i] + mu * v[i] - lr * g[i] : w[i] + v[i];
            }
          }};
}
Reference adagrad_ref(double lr, double init, double eps) {
  lr = hp(lr), eps = hp(eps);
  return {{"accumulator"}, {init}, [=](int64_t, Vec& w, const Vec& g, std::vector<Vec>& s, double&) {
            Vec& acc = s[0];
            for (size_t i = 0; i < w.size(); ++i) {
              acc[i] = acc[i] + g[i] * g[i];
              w[i] = w[i] - lr * g[i] / (std::sqrt(acc[i]) + eps);  // K210: eps outside the root
            }
          }};
}
Reference rmsprop_ref(double lr, double rho, double mu, double eps, bool centered) {
  lr = hp(lr), rho = hp(rho), mu = hp(mu), eps = hp(eps);
  Reference r;
  r.slot_names = {"rms"};
  if (mu > 0) r.slot_names.push_back("momentum");
  if (centered) r.slot_names.push_back("mg");
  r.slot_init.assign(r.slot_names.size(), 0.0);
  r.step = [=](int64_t, Vec& w, const Vec& g, std::vector<Vec>& s, double&) {
    Vec& ms = s[0];
    Vec* mom = mu > 0 ? &s[1] : nullptr;
    Vec* mg = centered ? &s[mu > 0 ? 2 : 1] : nullptr;
    for (size_t i = 0; i < w.size(); ++i) {
      ms[i] = rho * ms[i] + (1 - rho) * g[i] * g[i];
      double denom = ms[i];
      if (mg) {
        (*mg)[i] = rho * (*mg)[i] + (1 - rho) * g[i];
        denom -= (*mg)[i] * (*mg)[i];
      }
      if (mom) {
        (*mom)[i] = mu * (*mom)[i] + lr * g[i] / std::sqrt(denom + eps);  // fused kernel: eps inside
        w[i] -= (*mom)[i];
      } else {
        w[i] -= lr * g[i] / (std::sqrt(denom) + eps);  // Python path: eps outside
      }
    }
  };
  return r;
}
Reference adam_ref(double lr, double b1, double b2, double eps, bool amsgrad) {
  Reference r;
  r.slot_names = {"m", "v"};
  if (amsgrad) r.slot_names.push_back("vhat");
  r.slot_init.assign(r.slot_names.size(), 0.0);
  r.step = [=](int64_t t, Vec& w, const Vec& g, std::vector<Vec>& s, double&) {
    // Keras's float32 beta variables in the bias corrections too (hp: float(0.999) in a float32 model).
    const double alpha = hp(lr * std::sqrt(1 - std::pow(hp(b2), double(t))) / (1 - std::pow(hp(b1), double(t))));
    const double b1r = hp(b1), b2r = hp(b2), epsr = hp(eps);
    for (size_t i = 0; i < w.size(); ++i) {
      s[0][i] = b1r * s[0][i] + (1 - b1r) * g[i];
      s[1][i] = b2r * s[1][i] + (1 - b2r) * g[i] * g[i];
      double v = s[1][i];
      if (amsgrad) v = s[2][i] = std::max(s[2][i], s[1][i]);
      w[i] -= alpha * s[0][i] / (std::sqrt(v) + epsr);
    }
  };
  return r;
}
Reference adamax_ref(double lr, double b1, double b2, double eps) {
  return {{"m", "v"}, {0.0, 0.0}, [=](int64_t t, Vec& w, const Vec& g, std::vector<Vec>& s, double&) {
            const double lr_t = hp(lr / (1 - std::pow(hp(b1), double(t)))), b1r = hp(b1), b2r = hp(b2), epsr = hp(eps);
            for (size_t i = 0; i < w.size(); ++i) {
              s[0][i] = b1r * s[0][i] + (1 - b1r) * g[i];
              s[1][i] = std::max(b2r * s[1][i], std::abs(g[i]));
              w[i] -= lr_t * s[0][i] / (s[1][i] + epsr);
            }
          }};
}
// `decay` 0.004: K210's momentum-cache schedule (1 would be K215/K3's).
Reference nadam_ref(double lr, double b1, double b2, double eps, double decay = 0.004) {
  Reference r{{"m", "v"}, {0.0, 0.0}, nullptr, "momentum_cache", 1.0};
  r.step = [=](int64_t t, Vec& w, const Vec& g, std::vector<Vec>& s, double& cache) {
    const double mu_t = hp(b1) * (1 - 0.5 * std::pow(0.96, decay * double(t)));
    const double mu_t1 = hp(b1) * (1 - 0.5 * std::pow(0.96, decay * double(t + 1)));
    cache = cache * mu_t;
    const double g_scale = hp(1 / (1 - cache)), m_scale = hp(1 / (1 - cache * mu_t1)),
                 v_scale = hp(1 / (1 - std::pow(hp(b2), double(t))));
    const double b1r = hp(b1), b2r = hp(b2), mu_tr = hp(mu_t), mu_t1r = hp(mu_t1), lrr = hp(lr), epsr = hp(eps);
    for (size_t i = 0; i < w.size(); ++i) {
      const double gp = g[i] * g_scale;  // g / (1 - cache_t)
      s[0][i] = b1r * s[0][i] + (1 - b1r) * g[i];
      const double mp = s[0][i] * m_scale;  // m / (1 - cache_t·mu_{t+1})
      s[1][i] = b2r * s[1][i] + (1 - b2r) * g[i] * g[i];
      const double vp = s[1][i] * v_scale;  // v / (1 - b2^t)
      const double mbar = (1 - mu_tr) * gp + mu_t1r * mp;
      w[i] -= lrr * mbar / (std::sqrt(vp) + epsr);
    }
  };
  return r;
}

struct Case {
  std::string yaml;
  Reference ref;
};
// Non-default hyper-parameters, with epsilons large enough that their place (inside or outside the
// square root) changes the result far beyond the tolerance.
std::vector<Case> explicit_cases() {
  return {
      {"{name: sgd, learning_rate: 0.1}", sgd_ref(0.1)},
      {"{name: sgd, learning_rate: 0.05, momentum: 0.9}", momentum_ref(0.05, 0.9, false)},
      {"{name: sgd, learning_rate: 0.05, momentum: 0.8, nesterov: true}", momentum_ref(0.05, 0.8, true)},
      {"{name: adagrad, learning_rate: 0.1, epsilon: 0.01}", adagrad_ref(0.1, 0.1, 0.01)},
      {"{name: adagrad, learning_rate: 0.1, initial_accumulator_value: 0.5, epsilon: 0.001}",
       adagrad_ref(0.1, 0.5, 0.001)},
      {"{name: rmsprop, learning_rate: 0.01, rho: 0.8, epsilon: 0.01}", rmsprop_ref(0.01, 0.8, 0.0, 0.01, false)},
      {"{name: rmsprop, learning_rate: 0.01, rho: 0.8, epsilon: 0.01, centered: true}",
       rmsprop_ref(0.01, 0.8, 0.0, 0.01, true)},
      {"{name: rmsprop, learning_rate: 0.01, rho: 0.8, momentum: 0.7, epsilon: 0.01}",
       rmsprop_ref(0.01, 0.8, 0.7, 0.01, false)},
      {"{name: rmsprop, learning_rate: 0.01, rho: 0.8, momentum: 0.7, epsilon: 0.01, centered: true}",
       rmsprop_ref(0.01, 0.8, 0.7, 0.01, true)},
      {"{name: adam, learning_rate: 0.01, beta_1: 0.8, beta_2: 0.99, epsilon: 0.001}",
       adam_ref(0.01, 0.8, 0.99, 0.001, false)},
      {"{name: adam, learning_rate: 0.01, beta_1: 0.8, beta_2: 0.99, epsilon: 0.001, amsgrad: true}",
       adam_ref(0.01, 0.8, 0.99, 0.001, true)},
      {"{name: adamax, learning_rate: 0.01, beta_1: 0.8, beta_2: 0.95, epsilon: 0.001}",
       adamax_ref(0.01, 0.8, 0.95, 0.001)},
      {"{name: nadam, learning_rate: 0.01, beta_1: 0.85, beta_2: 0.99, epsilon: 0.001}",
       nadam_ref(0.01, 0.85, 0.99, 0.001)},
  };
}

TEST(OptimizerRules, HandComputedFloat32) {
  g_f32 = true;
  for (const Case& c : explicit_cases()) check_against_reference(c.yaml, c.ref, DType::F32, 1e-6);
  g_f32 = false;
}

TEST(OptimizerRules, HandComputedFloat64) {
  for (const Case& c : explicit_cases()) check_against_reference(c.yaml, c.ref, DType::F64, 1e-12);
}

// The reference really distinguishes the variants (by the metric of expect_close, well beyond the
// float32 tolerance of 1e-6): nesterov, eps inside or outside the root, centered, amsgrad, Nadam's
// K210 momentum schedule against K215's.
TEST(OptimizerRules, ReferenceIsDiscriminating) {
  auto max_rel_diff = [](Reference a, Reference b) {
    Vec wa = kW0, wb = kW0;
    std::vector<Vec> sa, sb;
    for (double x : a.slot_init) sa.push_back(Vec(wa.size(), x));
    for (double x : b.slot_init) sb.push_back(Vec(wb.size(), x));
    double d = 0;
    for (int k = 0; k < 5; ++k) {
      Vec g = grads_for_step(k, wa.size());
      a.step(k + 1, wa, g, sa, a.scalar);
      b.step(k + 1, wb, g, sb, b.scalar);
    }
    double scale = 0;
    for (double x : wb) scale = std::max(scale, std::abs(x));
    for (size_t i = 0; i < wa.size(); ++i) d = std::max(d, std::abs(wa[i] - wb[i]) / (std::abs(wb[i]) + scale));
    return d;
  };
  EXPECT_GT(max_rel_diff(momentum_ref(0.05, 0.8, true), momentum_ref(0.05, 0.8, false)), 1e-4);
  EXPECT_GT(max_rel_diff(adagrad_ref(0.1, 0.5, 0.001), adagrad_ref(0.1, 0.5, 0.0)), 1e-5);
  EXPECT_GT(max_rel_diff(rmsprop_ref(0.01, 0.8, 0.0, 0.01, true), rmsprop_ref(0.01, 0.8, 0.0, 0.01, false)), 1e-4);
  EXPECT_GT(max_rel_diff(adam_ref(0.01, 0.8, 0.99, 0.001, true), adam_ref(0.01, 0.8, 0.99, 0.001, false)), 1e-5);
  EXPECT_GT(max_rel_diff(nadam_ref(0.01, 0.85, 0.99, 0.001), nadam_ref(0.01, 0.85, 0.99, 0.001, 1.0)), 1e-5);
  // K215's Adagrad (eps inside the root) against K210's
  Reference inside = adagrad_ref(0.1, 0.5, 0.001);
  inside.step = [](int64_t, Vec& w, const Vec& g, std::vector<Vec>& s, double&) {
    for (size_t i = 0; i < w.size(); ++i) {
      s[0][i] += g[i] * g[i];
      w[i] -= 0.1 * g[i] / std::sqrt(s[0][i] + 0.001);
    }
  };
  EXPECT_GT(max_rel_diff(adagrad_ref(0.1, 0.5, 0.001), inside), 1e-5);
  // RMSprop with momentum: eps inside (K210 fused kernel) against outside
  Reference outside = rmsprop_ref(0.01, 0.8, 0.7, 0.01, false);
  outside.step = [](int64_t, Vec& w, const Vec& g, std::vector<Vec>& s, double&) {
    for (size_t i = 0; i < w.size(); ++i) {
      s[0][i] = 0.8 * s[0][i] + 0.2 * g[i] * g[i];
      s[1][i] = 0.7 * s[1][i] + 0.01 * g[i] / (std::sqrt(s[0][i]) + 0.01);
      w[i] -= s[1][i];
    }
  };
  EXPECT_GT(max_rel_diff(rmsprop_ref(0.01, 0.8, 0.7, 0.01, false), outside), 1e-5);
}

// `optimizer: adam` etc. take Keras's defaults: SGD lr 0.01, the others 0.001; epsilon 1e-7; rho 0.9;
// betas 0.9/0.999; Adagrad's accumulator 0.1. In float64 so that even epsilon 1e-7 is visible.
TEST(OptimizerRules, KerasDefaults) {
  struct D {
    std::string name, keras;
    double lr;
    Reference ref;
  };
  std::vector<D> ds = {
      {"sgd", "SGD", 0.01, sgd_ref(0.01)},
      {"adagrad", "Adagrad", 0.001, adagrad_ref(0.001, 0.1, 1e-7)},
      {"rmsprop", "RMSprop", 0.001, rmsprop_ref(0.001, 0.9, 0.0, 1e-7, false)},
      {"adam", "Adam", 0.001, adam_ref(0.001, 0.9, 0.999, 1e-7, false)},
      {"adamax", "Adamax", 0.001, adamax_ref(0.001, 0.9, 0.999, 1e-7)},
      {"nadam", "Nadam", 0.001, nadam_ref(0.001, 0.9, 0.999, 1e-7)},
  };
  for (const D& d : ds) {
    auto o = opt_from_yaml(d.name);
    EXPECT_EQ(o->name(), d.keras);
    EXPECT_EQ(o->learning_rate(), d.lr) << d.name;
    EXPECT_EQ(o->clip().clipvalue, 0.0);
    EXPECT_EQ(o->clip().clipnorm, 0.0);
    EXPECT_EQ(o->clip().global_clipnorm, 0.0);
    check_against_reference(d.name, d.ref, DType::F64, 1e-13);
    // Case-insensitive names and the mapping form give the same.
    EXPECT_EQ(opt_from_yaml("{name: " + d.keras + "}")->name(), d.keras);
  }
  // Absent: RMSprop, compile()'s default.
  auto none = Optimizer::from_config(ConfigNode());
  EXPECT_EQ(none->name(), "RMSprop");
  EXPECT_EQ(none->learning_rate(), 0.001);
  // The momentum a 1cycle schedule cycles.
  EXPECT_FALSE(opt_from_yaml("sgd")->has_momentum());
  EXPECT_TRUE(opt_from_yaml("{name: sgd, momentum: 0.9}")->has_momentum());
  EXPECT_EQ(opt_from_yaml("adam")->momentum(), 0.9);
  EXPECT_FALSE(opt_from_yaml("rmsprop")->has_momentum());
}

TEST(OptimizerConfig, Errors) {
  auto msg = [](const std::string& yaml) -> std::string {
    try {
      opt_from_yaml(yaml);
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "(no error)";
  };
  EXPECT_NE(msg("adamm").find("did you mean 'adam'"), std::string::npos) << msg("adamm");
  EXPECT_NE(msg("{name: sgd, momentum: 1.5}").find("momentum"), std::string::npos);
  EXPECT_NE(msg("{name: adam, learning_rate: -0.1}").find("learning_rate"), std::string::npos);
  EXPECT_NE(msg("{name: adam, learning_rate: 0}").find("learning_rate"), std::string::npos);
  EXPECT_NE(msg("{name: adam, clipnorm: 1, global_clipnorm: 1}").find("global_clipnorm"), std::string::npos)
      << msg("{name: adam, clipnorm: 1, global_clipnorm: 1}");
  EXPECT_NE(msg("{name: adam, clipvalue: -1}").find("clipvalue"), std::string::npos);
  EXPECT_NE(msg("{name: adam, rho: 0.9}").find("rho"), std::string::npos);  // not an Adam argument
  EXPECT_NE(msg("{name: nadam, decay: 0.01}").find("decay"), std::string::npos);
  // clipvalue combines with either norm clip
  EXPECT_EQ(msg("{name: adam, clipvalue: 1, clipnorm: 1}"), "(no error)");
  EXPECT_EQ(msg("{name: adam, clipvalue: 1, global_clipnorm: 1}"), "(no error)");
}

// ---- clipping, decay, frozen layers ---------------------------------------------------------------
const char* kTwoDense = R"(model:
  input_shape: [3]
  layers:
    - dense: {units: 2}
    - dense: {units: 2}
)";

// SGD with lr 1 applies -g exactly: the clipped gradient is w_before - w_after.
Vec clipped_by(const std::string& opt_yaml, const Vec& g, double* norm_out = nullptr) {
  auto m = model_from_yaml(kTwoDense);
  m->init(1);
  auto opt = opt_from_yaml(opt_yaml);
  opt->bind(*m);
  Vec w0 = flat(*m, false);
  set_flat(*m, g, true);
  const double n = opt->apply(*m);
  if (norm_out) *norm_out = n;
  Vec w1 = flat(*m, false), out(w0.size());
  for (size_t i = 0; i < w0.size(); ++i) out[i] = w0[i] - w1[i];
  return out;
}

// kernel0 [6], bias0 [2], kernel1 [4], bias1 [2]
const Vec kG = {3.0, 0.1, -0.2, 0.1, 0.0, -0.1, /**/ 0.45, -0.6, /**/ -2.0, 1.0, 0.5, -0.5, /**/ 0.01, 0.02};
const size_t kSizes[] = {6, 2, 4, 2};

double norm_of(const Vec& v, size_t begin, size_t n) {
  double s = 0;
  for (size_t i = begin; i < begin + n; ++i) s += v[i] * v[i];
  return std::sqrt(s);
}

TEST(Clipping, ClipValue) {
  Vec want = kG;
  for (double& x : want) x = std::clamp(x, -0.25, 0.25);
  double n = 0;
  expect_close(clipped_by("{name: sgd, learning_rate: 1, clipvalue: 0.25}", kG, &n), want, 1e-14, "clipvalue");
  EXPECT_TRUE(std::isnan(n));  // no global norm without global_clipnorm
}

TEST(Clipping, ClipNormPerTensor) {
  const double c = 0.5;
  Vec want = kG;
  size_t off = 0;
  for (size_t n : kSizes) {
    const double norm = norm_of(kG, off, n);
    for (size_t i = off; i < off + n; ++i) want[i] = kG[i] * c / std::max(norm, c);
    off += n;
  }
  // bias1 (norm 0.022) is unchanged; bias0 (norm 0.75, between c and 2c) and the kernels are scaled.
  EXPECT_NEAR(want[6], 0.3, 1e-15);
  EXPECT_NEAR(want[13], 0.02, 1e-15);
  EXPECT_LT(std::abs(want[0]), 0.5);
  expect_close(clipped_by("{name: sgd, learning_rate: 1, clipnorm: 0.5}", kG), want, 1e-14, "clipnorm");
}

TEST(Clipping, GlobalClipNorm) {
  const double c = 1.0;
  const double G = norm_of(kG, 0, kG.size());
  Vec want = kG;
  for (double& x : want) x = x * c / std::max(G, c);
  double n = 0;
  expect_close(clipped_by("{name: sgd, learning_rate: 1, global_clipnorm: 1.0}", kG, &n), want, 1e-14, "global");
  EXPECT_NEAR(n, G, 1e-14 * G);  // the norm before clipping
  // Below the threshold: unchanged, and the norm is still reported.
  expect_close(clipped_by("{name: sgd, learning_rate: 1, global_clipnorm: 100}", kG, &n), kG, 1e-15, "global");
  EXPECT_NEAR(n, G, 1e-14 * G);
}

// K210 order: clipvalue, then clipnorm (per tensor) / global_clipnorm on the value-clipped gradient.
TEST(Clipping, ValueThenNorm) {
  Vec v = kG;
  for (double& x : v) x = std::clamp(x, -1.0, 1.0);
  Vec want = v;
  size_t off = 0;
  for (size_t n : kSizes) {
    const double norm = norm_of(v, off, n);
    for (size_t i = off; i < off + n; ++i) want[i] = v[i] * 1.0 / std::max(norm, 1.0);
    off += n;
  }
  expect_close(clipped_by("{name: sgd, learning_rate: 1, clipvalue: 1, clipnorm: 1}", kG), want, 1e-14,
               "clipvalue+clipnorm");
  // the other order would give a visibly different kernel0
  const double n0 = norm_of(kG, 0, 6);
  EXPECT_GT(std::abs(want[1] - kG[1] / n0), 1e-3);

  const double G = norm_of(v, 0, v.size());
  Vec wantg = v;
  for (double& x : wantg) x = x * 0.5 / std::max(G, 0.5);
  double n = 0;
  expect_close(clipped_by("{name: sgd, learning_rate: 1, clipvalue: 1, global_clipnorm: 0.5}", kG, &n), wantg,
               1e-14, "clipvalue+global");
  EXPECT_NEAR(n, G, 1e-14 * G);  // the norm of the value-clipped gradient
}

TEST(Clipping, NonFiniteGlobalNormGivesNaN) {
  Vec g = kG;
  g[2] = std::numeric_limits<double>::infinity();
  double n = 0;
  Vec d = clipped_by("{name: sgd, learning_rate: 1, global_clipnorm: 1}", g, &n);
  EXPECT_TRUE(std::isinf(n));
  for (double x : d) EXPECT_TRUE(std::isnan(x));
}

// Legacy decay: lr / (1 + decay·iterations), iterations before the increment.
TEST(LegacyDecay, SgdAndAdam) {
  auto m = one_layer("[3]", "dense: {units: 2}");
  auto opt = opt_from_yaml("{name: sgd, learning_rate: 0.1, decay: 0.5}");
  opt->bind(*m);
  Vec w = kW0;
  set_flat(*m, w, false);
  for (int k = 0; k < 4; ++k) {
    const double lr = 0.1 / (1 + 0.5 * k);
    EXPECT_NEAR(opt->effective_learning_rate(), lr, 1e-16);
    EXPECT_EQ(opt->learning_rate(), 0.1);
    Vec g = grads_for_step(k, w.size());
    set_flat(*m, g, true);
    for (size_t i = 0; i < w.size(); ++i) w[i] -= lr * g[i];
    opt->apply(*m);
    expect_close(flat(*m, false), w, 1e-14, "sgd decay step " + std::to_string(k));
  }
  // Adam: the decayed rate enters alpha_t.
  Reference base = adam_ref(0.02, 0.9, 0.999, 1e-7, false);
  Reference dec = base;
  dec.step = [=](int64_t t, Vec& w2, const Vec& g, std::vector<Vec>& s, double& c) {
    adam_ref(0.02 / (1 + 0.25 * double(t - 1)), 0.9, 0.999, 1e-7, false).step(t, w2, g, s, c);
  };
  check_against_reference("{name: adam, learning_rate: 0.02, decay: 0.25}", dec, DType::F64, 1e-13);
  g_f32 = true;
  check_against_reference("{name: adam, learning_rate: 0.02, decay: 0.25}", dec, DType::F32, 1e-6);
  g_f32 = false;
}

// Frozen layers: not updated, slots untouched, and their gradients are not in the global norm.
TEST(FrozenLayers, NotUpdatedAndNotInGlobalNorm) {
  auto m = model_from_yaml(kTwoDense);
  m->init(2);
  m->layer(0).set_trainable(false);
  auto opt = opt_from_yaml("{name: adam, learning_rate: 0.1, global_clipnorm: 1.0}");
  opt->bind(*m);
  const Vec frozen_before = m->layer(0).weights()[0].value.to_double_vector();
  const Vec frozen_bias = m->layer(0).weights()[1].value.to_double_vector();
  ops::fill(m->layer(0).weights()[0].grad, 100.0);
  ops::fill(m->layer(0).weights()[1].grad, -50.0);
  Vec g1 = {-2.0, 1.0, 0.5, -0.5, 0.01, 0.02};
  set_flat(*m, g1, true);  // only layer 1 is trainable now
  ASSERT_EQ(m->trainable_weights().size(), 2u);
  const double n = opt->apply(*m);
  EXPECT_NEAR(n, norm_of(g1, 0, g1.size()), 1e-14);
  EXPECT_EQ(m->layer(0).weights()[0].value.to_double_vector(), frozen_before);
  EXPECT_EQ(m->layer(0).weights()[1].value.to_double_vector(), frozen_bias);
  // the state still lists every gradient-carrying weight (Keras creates slots for all), frozen ones at 0
  auto st = opt->state();
  ASSERT_EQ(st.size(), 8u);  // m, v for 4 weights
  EXPECT_EQ(st[0].first, "Adam/dense/kernel/m:0");
  EXPECT_EQ(st[2].first, "Adam/dense_1/kernel/m:0");
  for (double x : st[0].second.to_double_vector()) EXPECT_EQ(x, 0.0);
  for (double x : st[5].second.to_double_vector()) EXPECT_EQ(x, 0.0);  // v of dense/bias
  for (double x : st[2].second.to_double_vector()) EXPECT_NE(x, 0.0);
  EXPECT_EQ(m->trainable_params(), 6);
  // Unfreezing: the layer trains again from its (zero) slots.
  m->layer(0).set_trainable(true);
  ops::fill(m->grads_arena(), 0.0);
  ops::fill(m->layer(0).weights()[0].grad, 0.5);
  opt->apply(*m);
  const Vec after = m->layer(0).weights()[0].value.to_double_vector();
  for (size_t i = 0; i < after.size(); ++i) EXPECT_LT(after[i], frozen_before[i]);
}

// Batch normalization's moving statistics (state, no gradient) stay out of the fused update.
TEST(FusedPath, LeavesStateAlone) {
  auto m = model_from_yaml(R"(model:
  input_shape: [3]
  layers:
    - dense: {units: 4}
    - batch_normalization: {}
    - dense: {units: 2}
)");
  m->init(5);
  const Vec all_before = m->weights_arena().to_double_vector();
  auto opt = opt_from_yaml("{name: sgd, learning_rate: 0.5}");
  opt->bind(*m);
  Vec g = grads_for_step(3, size_t(m->trainable_params()));
  set_flat(*m, g, true);
  const Vec w0 = flat(*m, false);
  opt->apply(*m);
  const Vec w1 = flat(*m, false);
  for (size_t i = 0; i < w0.size(); ++i) EXPECT_NEAR(w1[i], w0[i] - 0.5 * g[i], 1e-15);
  for (const WeightRef& r : m->weight_refs())
    if (r.grad_offset < 0) {
      const Vec now = r.weight->value.to_double_vector();
      for (int64_t j = 0; j < r.weight->value.numel(); ++j) EXPECT_EQ(now[size_t(j)], all_before[size_t(r.offset + j)]);
    }
}

// The fused whole-arena path (every layer trainable) and the per-weight path (a frozen layer) give
// bit-identical weights and slots for the layers both update.
TEST(FusedPath, BitIdenticalToPerWeightPath) {
  const char* yaml = R"(model:
  input_shape: [3]
  layers:
    - dense: {units: 4}
    - dense: {units: 3}
    - dense: {units: 2}
)";
  const std::vector<std::string> opts = {
      "{name: sgd, learning_rate: 0.05, momentum: 0.9, nesterov: true, clipvalue: 0.8}",
      "{name: adagrad, learning_rate: 0.1, clipnorm: 0.7}",
      "{name: rmsprop, learning_rate: 0.01, momentum: 0.5, centered: true, clipvalue: 1.0, clipnorm: 0.9}",
      "{name: rmsprop, learning_rate: 0.01, centered: true}",
      "{name: adam, learning_rate: 0.01, amsgrad: true, decay: 0.1}",
      "{name: adamax, learning_rate: 0.01}",
      "{name: nadam, learning_rate: 0.01, clipnorm: 0.5}",
      "{name: adam, learning_rate: 0.01, global_clipnorm: 0.5}",
      "{name: sgd, learning_rate: 0.01, clipvalue: 0.3, global_clipnorm: 0.5}",
  };
  for (int frozen = 0; frozen < 3; ++frozen)
    for (const std::string& oy : opts) {
      SCOPED_TRACE(oy + ", layer " + std::to_string(frozen) + " frozen");
      auto a = model_from_yaml(yaml, DType::F32);
      auto b = model_from_yaml(yaml, DType::F32);
      a->init(9);
      b->init(9);
      b->layer(frozen).set_trainable(false);
      auto oa = opt_from_yaml(oy), ob = opt_from_yaml(oy);
      oa->bind(*a);
      ob->bind(*b);
      for (int k = 0; k < 4; ++k) {
        for (int l = 0; l < 3; ++l)
          for (size_t j = 0; j < 2; ++j) {
            const Tensor& ga = a->layer(l).weights()[j].grad;
            Vec g = grads_for_step(k + l + int(j), size_t(ga.numel()));
            // the frozen layer's gradient is zero in `a` so that the global norms agree; in `b` it is
            // large and must be ignored
            if (l == frozen) g.assign(g.size(), 0.0);
            set_values(ga, g);
            set_values(b->layer(l).weights()[j].grad, l == frozen ? Vec(g.size(), 7.0) : g);
          }
        oa->apply(*a);
        ob->apply(*b);
      }
      for (int l = 0; l < 3; ++l)
        for (size_t j = 0; j < 2; ++j) {
          if (l == frozen) continue;
          const auto va = a->layer(l).weights()[j].value.to_vector(), vb = b->layer(l).weights()[j].value.to_vector();
          ASSERT_EQ(va.size(), vb.size());
          EXPECT_EQ(std::memcmp(va.data(), vb.data(), va.size() * sizeof(float)), 0) << "layer " << l << " weight " << j;
        }
      const std::string frozen_name = a->layer(frozen).name() + "/";
      auto sa = oa->state(), sb = ob->state();
      ASSERT_EQ(sa.size(), sb.size());
      for (size_t i = 0; i < sa.size(); ++i) {
        if (sa[i].first.find("/" + frozen_name) != std::string::npos) continue;
        const auto va = sa[i].second.to_vector(), vb = sb[i].second.to_vector();
        EXPECT_EQ(std::memcmp(va.data(), vb.data(), va.size() * sizeof(float)), 0) << sa[i].first;
      }
      EXPECT_EQ(oa->scalar_state(), ob->scalar_state());
    }
}

// ---- plain descent inside the backward pass (UpdateStep in one process) ----------------------------
TEST(PlainDescentRate, OnlySgdWithoutMomentumOrClipping) {
  auto m = model_from_yaml("model:\n  input_shape: [3]\n  layers:\n    - dense: {units: 2}\n", DType::F32);
  auto sgd = opt_from_yaml("{name: sgd, learning_rate: 0.1, decay: 0.5}");
  sgd->bind(*m);
  EXPECT_DOUBLE_EQ(sgd->plain_descent_rate(), 0.1);
  sgd->apply(*m);
  EXPECT_DOUBLE_EQ(sgd->plain_descent_rate(), 0.1 / 1.5) << "the legacy decay's rate of the next step";
  for (const char* y : {"{name: sgd, momentum: 0.9}", "{name: sgd, nesterov: true, momentum: 0.5}",
                        "{name: sgd, clipvalue: 1.0}", "{name: sgd, clipnorm: 1.0}", "{name: sgd, global_clipnorm: 1.0}",
                        "adam", "adagrad", "rmsprop", "adamax", "nadam"}) {
    SCOPED_TRACE(y);
    EXPECT_EQ(opt_from_yaml(y)->plain_descent_rate(), 0.0);
  }
  EXPECT_THROW(opt_from_yaml("adam")->apply(*m, true), std::exception) << "apply(descended) needs plain descent";
}

// SGD without momentum or clipping takes its step inside Dense's backward (the weight-gradient product
// accumulates into the kernel; never written as a gradient). Against the ordinary path (backward, l2
// gradients, the optimizer's pass, max-norm) the weights agree to float32 rounding over several steps
// whose rate changes (legacy decay), while layers that cannot descend take the ordinary path beside
// them: batch normalization, a Dense with an l2 penalty, a frozen Dense. The BN-first model descends
// in the Dense that forms the normalisation's sums (backward_to_normalized).
TEST(DescentInBackward, MatchesTheOptimizersPass) {
  const char* deep = R"(model:
  input_shape: [6]
  layers:
    - dense: {units: 8, activation: elu, kernel_constraint: {max_norm: {max_value: 0.9}}}
    - batch_normalization: {}
    - dense: {units: 5, activation: relu, kernel_regularizer: {l2: 0.01}}
    - dense: {units: 7, activation: selu}
    - dense: {units: 4, activation: tanh, use_bias: false}
    - dense: {units: 3}
)";
  const char* bn_first = R"(model:
  input_shape: [6]
  layers:
    - batch_normalization: {}
    - dense: {units: 5, activation: relu}
    - dense: {units: 3}
)";
  struct Case {
    const char* yaml;
    int frozen;  // -1: none
  };
  for (const Case& c : {Case{deep, -1}, Case{deep, 3}, Case{bn_first, -1}}) {
    SCOPED_TRACE(str_cat(c.yaml == deep ? "deep" : "bn first", ", frozen ", c.frozen));
    auto a = model_from_yaml(c.yaml, DType::F32), b = model_from_yaml(c.yaml, DType::F32);
    a->init(5);
    b->init(5);
    if (c.frozen >= 0) {
      a->layer(c.frozen).set_trainable(false);
      b->layer(c.frozen).set_trainable(false);
    }
    auto oa = opt_from_yaml("{name: sgd, learning_rate: 0.2, decay: 0.3}");
    auto ob = opt_from_yaml("{name: sgd, learning_rate: 0.2, decay: 0.3}");
    oa->bind(*a);
    ob->bind(*b);
    comm::LocalCommunicator local;
    UpdateStep step(*a, local);
    for (int k = 0; k < 4; ++k) {
      SCOPED_TRACE(str_cat("step ", k));
      const Tensor x = randn({9, 6}, 100 + uint64_t(k), 1.0, 0.0, DType::F32);
      const Tensor dout = randn({9, 3}, 200 + uint64_t(k), 1.0, 0.0, DType::F32);
      const std::vector<float> dout_before = dout.to_vector();
      // Poison the gradients of the layers that descend: read by anything, they would spoil the weights.
      std::vector<int> descending;
      for (int l = 0; l < int(a->layers().size()); ++l)
        if (a->layer(l).descends_in_backward()) {
          descending.push_back(l);
          for (Weight& w : a->layer(l).weights()) ops::fill(w.grad, std::numeric_limits<double>::quiet_NaN());
        }
      EXPECT_EQ(descending.size(), c.yaml == deep ? (c.frozen >= 0 ? 3u : 4u) : 2u);
      Context ca = training_ctx(1, k), cb = training_ctx(1, k);
      a->forward(x, ca);
      step.run(dout, ca, *oa);
      EXPECT_EQ(ca.descent_rate, 0.0) << "reset after the backward pass";
      b->forward(x, cb);
      b->backward(dout, cb);
      b->add_regularization_grads();
      ob->apply(*b);
      b->apply_constraints();
      EXPECT_EQ(dout.to_vector(), dout_before) << "the output gradient is left as given";
      EXPECT_EQ(oa->iterations(), ob->iterations());
      if (c.yaml == deep) {
        for (int l : descending)
          for (const Weight& w : a->layer(l).weights())
            EXPECT_FALSE(ops::all_finite(w.grad)) << "layer " << l << " wrote its gradient";
      }
      for (size_t l = 0; l < a->layers().size(); ++l)
        for (size_t j = 0; j < a->layers()[l]->weights().size(); ++j) {
          const std::vector<float> va = a->layers()[l]->weights()[j].value.to_vector();
          const std::vector<float> vb = b->layers()[l]->weights()[j].value.to_vector();
          ASSERT_EQ(va.size(), vb.size());
          for (size_t i = 0; i < va.size(); ++i)
            ASSERT_NEAR(va[i], vb[i], 2e-6 * std::max(1.0f, std::abs(vb[i]))) << "layer " << l << " weight " << j << "[" << i << "]";
        }
    }
    // The rate really moved the weights (the comparison above is not between two unchanged models).
    auto fresh = model_from_yaml(c.yaml, DType::F32);
    fresh->init(5);
    EXPECT_GT(ops::max_abs_diff(fresh->weights_arena(), a->weights_arena()), 1e-2);
  }
}

// ---- state round trip -----------------------------------------------------------------------------
TEST(OptimizerState, RoundTripContinuesBitIdentically) {
  const std::vector<std::string> opts = {
      "{name: sgd, learning_rate: 0.05, momentum: 0.9, decay: 0.3}",
      "{name: adagrad, learning_rate: 0.1}",
      "{name: rmsprop, learning_rate: 0.01, momentum: 0.5, centered: true}",
      "{name: adam, learning_rate: 0.01, amsgrad: true, clipnorm: 1.0}",
      "{name: adamax, learning_rate: 0.01}",
      "{name: nadam, learning_rate: 0.01}",
  };
  for (const std::string& oy : opts) {
    SCOPED_TRACE(oy);
    auto a = model_from_yaml(kTwoDense, DType::F32);
    a->init(4);
    auto oa = opt_from_yaml(oy);
    oa->bind(*a);
    const size_t n = size_t(a->trainable_params());
    for (int k = 0; k < 3; ++k) {
      set_flat(*a, grads_for_step(k, n), true);
      oa->apply(*a);
    }
    // "checkpoint": copies of the weights, the slots and the scalars
    auto b = model_from_yaml(kTwoDense, DType::F32);
    Tensor wb = b->weights_arena();
    wb.copy_from(a->weights_arena());
    std::vector<std::pair<std::string, Tensor>> saved;
    for (auto& [k, t] : oa->state()) saved.emplace_back(k, t.clone());
    const auto scalars = oa->scalar_state();
    auto ob = opt_from_yaml(oy);
    ob->bind(*b);
    ob->load_state(saved, scalars, "ckpt");
    EXPECT_EQ(ob->iterations(), 3);
    EXPECT_EQ(ob->scalar_state(), scalars);
    EXPECT_EQ(ob->effective_learning_rate(), oa->effective_learning_rate());
    for (int k = 3; k < 6; ++k) {
      set_flat(*a, grads_for_step(k, n), true);
      set_flat(*b, grads_for_step(k, n), true);
      oa->apply(*a);
      ob->apply(*b);
    }
    const auto va = a->weights_arena().to_vector(), vb = b->weights_arena().to_vector();
    EXPECT_EQ(std::memcmp(va.data(), vb.data(), va.size() * sizeof(float)), 0);
    auto sa = oa->state(), sb = ob->state();
    ASSERT_EQ(sa.size(), sb.size());
    for (size_t i = 0; i < sa.size(); ++i) {
      EXPECT_EQ(sa[i].first, sb[i].first);
      EXPECT_EQ(sa[i].second.to_vector(), sb[i].second.to_vector()) << sa[i].first;
    }
    EXPECT_EQ(oa->scalar_state(), ob->scalar_state());
  }
}

TEST(OptimizerState, LoadErrors) {
  auto m = model_from_yaml(kTwoDense, DType::F32);
  auto o = opt_from_yaml("nadam");
  o->bind(*m);
  std::vector<std::pair<std::string, Tensor>> st;
  for (auto& [k, t] : o->state()) st.emplace_back(k, t.clone());
  auto sc = o->scalar_state();
  EXPECT_EQ(st.size(), 8u);
  EXPECT_EQ(st[0].first, "Nadam/dense/kernel/m:0");
  EXPECT_EQ(st[4].first, "Nadam/dense/kernel/v:0");
  EXPECT_EQ(sc.at("momentum_cache"), 1.0);
  // missing slot
  auto missing = st;
  missing.erase(missing.begin() + 3);
  EXPECT_THROW(o->load_state(missing, sc, "x.ckpt"), CheckpointError);
  // wrong size
  auto wrong = st;
  wrong[1].second = Tensor::zeros({5});
  try {
    o->load_state(wrong, sc, "x.ckpt");
    ADD_FAILURE() << "no error";
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("x.ckpt"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("Nadam/dense/bias/m:0"), std::string::npos) << e.what();
  }
  // missing scalar
  auto sc2 = sc;
  sc2.erase("momentum_cache");
  EXPECT_THROW(o->load_state(st, sc2, "x.ckpt"), CheckpointError);
  // another optimizer's state
  auto adam = opt_from_yaml("adam");
  adam->bind(*m);
  EXPECT_THROW(adam->load_state(st, sc, "x.ckpt"), CheckpointError);
}

// ---- regularization and constraints (keras-semantics §7.1, §7.5) ----------------------------------
TEST(Regularization, PenaltyAndGradientByHand) {
  auto m = model_from_yaml(R"(model:
  input_shape: [3]
  layers:
    - dense: {units: 2, kernel_regularizer: {l1: 0.01, l2: 0.02}, bias_regularizer: {l2: 0.5}}
    - dense: {units: 2, kernel_regularizer: l2}
    - dense: {units: 2, kernel_regularizer: {l1: 0.3}}
)");
  m->init(3);
  Weight& k0 = m->layer(0).weights()[0];
  Weight& b0 = m->layer(0).weights()[1];
  Weight& k1 = m->layer(1).weights()[0];
  Weight& k2 = m->layer(2).weights()[0];
  set_values(b0.value, {0.3, -0.4});
  const Vec K0 = k0.value.to_double_vector(), B0 = b0.value.to_double_vector(), K1 = k1.value.to_double_vector(),
            K2 = k2.value.to_double_vector();
  auto sum = [](const Vec& v, auto f) {
    double s = 0;
    for (double x : v) s += f(x);
    return s;
  };
  auto sq = [](double x) { return x * x; };
  auto ab = [](double x) { return std::abs(x); };
  const double want = 0.01 * sum(K0, ab) + 0.02 * sum(K0, sq) + 0.5 * sum(B0, sq) + 0.01 * sum(K1, sq) +
                      0.3 * sum(K2, ab);  // l2 = factor·Σw², no ½
  EXPECT_NEAR(m->regularization_loss(), want, 1e-14);
  // gradients add on top of what is there
  ops::fill(m->grads_arena(), 0.25);
  m->add_regularization_grads();
  auto sgn = [](double x) { return double((x > 0) - (x < 0)); };
  const Vec gk0 = k0.grad.to_double_vector(), gb0 = b0.grad.to_double_vector(), gk1 = k1.grad.to_double_vector(),
            gk2 = k2.grad.to_double_vector();
  for (size_t i = 0; i < K0.size(); ++i) EXPECT_NEAR(gk0[i], 0.25 + 0.01 * sgn(K0[i]) + 2 * 0.02 * K0[i], 1e-15);
  for (size_t i = 0; i < B0.size(); ++i) EXPECT_NEAR(gb0[i], 0.25 + 2 * 0.5 * B0[i], 1e-15);
  for (size_t i = 0; i < K1.size(); ++i) EXPECT_NEAR(gk1[i], 0.25 + 2 * 0.01 * K1[i], 1e-15);
  for (size_t i = 0; i < K2.size(); ++i) EXPECT_NEAR(gk2[i], 0.25 + 0.3 * sgn(K2[i]), 1e-15);
  for (double x : m->layer(1).weights()[1].grad.to_double_vector()) EXPECT_EQ(x, 0.25);  // no bias regularizer
  // The penalty's gradient matches a finite difference of regularization_loss.
  double* w = k0.value.data<double>();
  const double keep = w[2];
  w[2] = keep + 1e-6;
  const double lp = m->regularization_loss();
  w[2] = keep - 1e-6;
  const double lm = m->regularization_loss();
  w[2] = keep;
  EXPECT_NEAR((lp - lm) / 2e-6, gk0[2] - 0.25, 1e-8);
  // A frozen layer's weights are not penalised and get no penalty gradient.
  m->layer(0).set_trainable(false);
  EXPECT_NEAR(m->regularization_loss(), 0.01 * sum(K1, sq) + 0.3 * sum(K2, ab), 1e-14);
  ops::fill(m->grads_arena(), 0.0);
  m->add_regularization_grads();
  for (double x : k0.grad.to_double_vector()) EXPECT_EQ(x, 0.0);
}

TEST(Constraints, MaxNormPerOutputUnit) {
  auto m = model_from_yaml(R"(model:
  input_shape: [3]
  layers:
    - dense: {units: 3, kernel_constraint: {max_norm: 1.0}}
    - dense: {units: 2, kernel_constraint: {max_norm: {max_value: 0.5, axis: 1}}}
    - dense: {units: 2, kernel_constraint: {max_norm: {}}}
)");
  // kernel [in=3, out=3]: column 0 norm 2 (shrinks), column 1 norm 0.5 (tiny eps shrink), column 2
  // norm exactly 1 (= max_value: still shrinks by 1/(1+1e-7)).
  const Vec K0 = {2.0 * 0.6, 0.3, 0.0, /**/ 2.0 * 0.8, 0.4, 0.6, /**/ 0.0, 0.0, 0.8};
  set_values(m->layer(0).weights()[0].value, K0);
  const Vec bias = {5.0, -5.0, 7.0};  // biases are never constrained
  set_values(m->layer(0).weights()[1].value, bias);
  const Vec K1 = {3.0, 4.0, 0.1, 0.2, -0.3, 0.0};  // [3, 2], axis 1: per input row
  set_values(m->layer(1).weights()[0].value, K1);
  m->apply_constraints();
  auto expect_cols = [](const Vec& before, const Vec& after, int64_t rows, int64_t cols, double maxv, int axis,
                        const std::string& what) {
    ASSERT_EQ(int64_t(after.size()), rows * cols);
    for (int64_t o = 0; o < (axis == 0 ? cols : rows); ++o) {
      double n2 = 0;
      for (int64_t i = 0; i < (axis == 0 ? rows : cols); ++i) {
        const double x = axis == 0 ? before[size_t(i * cols + o)] : before[size_t(o * cols + i)];
        n2 += x * x;
      }
      const double n = std::sqrt(n2);
      const double f = std::clamp(n, 0.0, maxv) / (1e-7 + n);
      for (int64_t i = 0; i < (axis == 0 ? rows : cols); ++i) {
        const size_t at = axis == 0 ? size_t(i * cols + o) : size_t(o * cols + i);
        EXPECT_NEAR(after[at], before[at] * f, 1e-15) << what << "[" << at << "]";
      }
    }
  };
  expect_cols(K0, m->layer(0).weights()[0].value.to_double_vector(), 3, 3, 1.0, 0, "dense kernel");
  EXPECT_EQ(m->layer(0).weights()[1].value.to_double_vector(), bias);
  expect_cols(K1, m->layer(1).weights()[0].value.to_double_vector(), 3, 2, 0.5, 1, "dense_1 kernel (axis 1)");
  // column 0 of layer 0 now has norm 1 (to ~1e-7), column 2 shrank a little
  const Vec a = m->layer(0).weights()[0].value.to_double_vector();
  EXPECT_NEAR(std::sqrt(a[0] * a[0] + a[3] * a[3] + a[6] * a[6]), 1.0, 2e-7);
  EXPECT_LT(a[8], 0.8);
  EXPECT_NEAR(a[8], 0.8 / (1 + 1e-7), 1e-15);
  // {max_norm: {}}: Keras's MaxNorm default max_value 2, axis 0
  set_values(m->layer(2).weights()[0].value, {3.0, 0.5, 4.0, 0.5});
  const Vec k2b = m->layer(2).weights()[0].value.to_double_vector();
  m->apply_constraints();
  expect_cols(k2b, m->layer(2).weights()[0].value.to_double_vector(), 2, 2, 2.0, 0, "dense_2 kernel (default 2)");
  // Frozen layers are not constrained (the optimizer does not touch them).
  set_values(m->layer(0).weights()[0].value, K0);
  m->layer(0).set_trainable(false);
  m->apply_constraints();
  EXPECT_EQ(m->layer(0).weights()[0].value.to_double_vector(), K0);
}

// PReLU's alpha takes its own regularizer and max-norm constraint (a rank-1 alpha: one norm over all).
TEST(Constraints, PReluAlpha) {
  auto m = one_layer("[4]", "prelu: {alpha_regularizer: {l2: 0.1}, alpha_constraint: {max_norm: 1.0}}");
  Weight& a = m->layer(0).weights()[0];
  ASSERT_EQ(a.name, "alpha");
  const Vec A = {0.6, -0.8, 0.5, 0.5};  // norm sqrt(1.5)
  set_values(a.value, A);
  EXPECT_NEAR(m->regularization_loss(), 0.1 * 1.5, 1e-15);
  ops::fill(m->grads_arena(), 0.0);
  m->add_regularization_grads();
  const Vec g = a.grad.to_double_vector();
  for (size_t i = 0; i < A.size(); ++i) EXPECT_NEAR(g[i], 0.2 * A[i], 1e-16);
  m->apply_constraints();
  const double n = std::sqrt(1.5), f = 1.0 / (1e-7 + n);
  const Vec after = a.value.to_double_vector();
  for (size_t i = 0; i < A.size(); ++i) EXPECT_NEAR(after[i], A[i] * f, 1e-15);
}

TEST(OptimizerApply, NeedsBindToThatModel) {
  auto m = one_layer("[3]", "dense: {units: 2}");
  auto other = one_layer("[3]", "dense: {units: 2}");
  auto o = opt_from_yaml("adam");
  EXPECT_ANY_THROW(o->apply(*m));
  o->bind(*other);
  EXPECT_ANY_THROW(o->apply(*m));
  EXPECT_EQ(o->iterations(), 0);
}

TEST(Constraints, Float32MatchesFormula) {
  auto m = one_layer("[4]", "dense: {units: 2, kernel_constraint: {max_norm: 1.5}}", DType::F32);
  const Vec K = {1.0, 0.1, -2.0, 0.2, 0.5, -0.3, 1.5, 0.4};
  set_values(m->layer(0).weights()[0].value, K);
  m->apply_constraints();
  const Vec a = m->layer(0).weights()[0].value.to_double_vector();
  for (int o = 0; o < 2; ++o) {
    double n2 = 0;
    for (int i = 0; i < 4; ++i) n2 += K[size_t(i * 2 + o)] * K[size_t(i * 2 + o)];
    const double n = std::sqrt(n2), f = std::min(n, 1.5) / (1e-7 + n);
    for (int i = 0; i < 4; ++i) EXPECT_NEAR(a[size_t(i * 2 + o)], K[size_t(i * 2 + o)] * f, 1e-6 * std::abs(K[size_t(i * 2 + o)]));
  }
}

}  // namespace
}  // namespace lockstep::test
