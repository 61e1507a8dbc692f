// First-order optimisers over a layer's named parameters: SGD (momentum, Nesterov), Adam,
// AdamW, with PyTorch's update rules (docs/training.md#optimisers).
#ifndef MOE_TRAIN_OPTIMIZER_HPP
#define MOE_TRAIN_OPTIMIZER_HPP

#include <moe/core/error.hpp>
#include <moe/core/types.hpp>
#include <moe/train/gradient_utils.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace moe {

namespace detail {

/// Walks a parameter set and its gradients in lockstep. for_each_parameter is a callback, so
/// the gradients are collected first as strided views, then the parameters are visited with
/// an index. Names are compared on the first step only (they are fixed by then; comparing
/// strings every step would cost more than the update of a small tensor); shapes every step.
template <class S>
class ParameterWalk {
 public:
  template <class Params, class Grads, class Update>
  void run(Params& params, const Grads& grads, const char* where, Update&& update) {
    grads_.clear();
    std::vector<std::string> grad_names;
    grads.for_each_parameter([&](const std::string& name, const auto& g) {
      grads_.push_back(parameter_map(g));
      if (!checked_) grad_names.push_back(name);
    });
    std::size_t i = 0;
    params.for_each_parameter([&](const std::string& name, auto&& p) {
      if (i >= grads_.size())
        throw_invalid(where, "number of gradient tensors", concat("at least ", i + 1, " (parameter '", name, "')"),
                      grads_.size());
      if (!checked_ && grad_names[i] != name)
        throw_invalid(where, concat("name of gradient ", i), concat("'", name, "'"), concat("'", grad_names[i], "'"));
      const auto& g = grads_[i];
      if (g.rows() != p.rows() || g.cols() != p.cols())
        throw_invalid(where, concat("shape of gradient '", name, "'"), concat("[", p.rows(), ", ", p.cols(), "]"),
                      concat("[", g.rows(), ", ", g.cols(), "]"));
      update(i, parameter_map(p), g);
      ++i;
    });
    require(i == grads_.size(), where, "number of gradient tensors (one per parameter)", i, grads_.size());
    checked_ = true;
  }

 private:
  std::vector<ConstParameterMap<S>> grads_;
  bool checked_ = false;
};

/// One parameter's optimiser state, created on its first step with the parameter's shape.
template <class S>
struct ParameterState {
  RowMatrix<S> first;   ///< momentum buffer (SGD) or exp_avg (Adam)
  RowMatrix<S> second;  ///< exp_avg_sq (Adam)
  std::int64_t step = 0;
};

template <class S>
ParameterState<S>& state_for(std::vector<ParameterState<S>>& states, std::size_t i, Index rows, Index cols,
                             bool second, const char* where) {
  if (states.size() <= i) {
    states.resize(i + 1);
    states[i].first = RowMatrix<S>::Zero(rows, cols);
    if (second) states[i].second = RowMatrix<S>::Zero(rows, cols);
  }
  auto& s = states[i];
  // A state of another shape means the optimiser is stepping a different layer.
  if (s.first.rows() != rows || s.first.cols() != cols)
    throw_invalid(where, concat("shape of parameter ", i),
                  concat("[", s.first.rows(), ", ", s.first.cols(), "] as on earlier steps"),
                  concat("[", rows, ", ", cols, "]"));
  return s;
}

inline void require_rate(double v, const char* where, const char* what) {
  require(std::isfinite(v) && v >= 0.0, where, what, "finite and >= 0", v);
}

inline void require_beta(double v, const char* where, const char* what) {
  require(std::isfinite(v) && v >= 0.0 && v < 1.0, where, what, "in [0, 1)", v);
}

}  // namespace detail

/// Stochastic gradient descent with momentum, torch.optim.SGD (dampening 0):
///   g = grad + weight_decay * p
///   b = g on the first step, else b = momentum * b + g          (when momentum != 0)
///   g = g + momentum * b if nesterov, else g = b                (when momentum != 0)
///   p = p - lr * g
///
/// The state (one buffer per parameter) lives here, created on the first step(). step() walks
/// params.for_each_parameter and grads.for_each_parameter in lockstep: a MoELayer and its
/// Gradients, or any policy and a zeros_like() copy of it.
template <class S>
class SGD {
 public:
  using scalar_type = S;

  explicit SGD(double lr, double momentum = 0.0, double weight_decay = 0.0, bool nesterov = false)
      : lr_(lr), momentum_(momentum), weight_decay_(weight_decay), nesterov_(nesterov) {
    constexpr const char* where = "SGD::SGD()";
    detail::require_rate(lr, where, "lr");
    detail::require_rate(momentum, where, "momentum");
    detail::require_rate(weight_decay, where, "weight_decay");
    detail::require(!nesterov || momentum > 0.0, where, "momentum with nesterov", "> 0", momentum);
  }

  [[nodiscard]] double lr() const noexcept { return lr_; }
  void set_lr(double lr) {
    detail::require_rate(lr, "SGD::set_lr()", "lr");
    lr_ = lr;
  }
  [[nodiscard]] double momentum() const noexcept { return momentum_; }
  [[nodiscard]] double weight_decay() const noexcept { return weight_decay_; }
  [[nodiscard]] bool nesterov() const noexcept { return nesterov_; }

  template <class Params, class Grads>
  void step(Params& params, const Grads& grads) {
    constexpr const char* where = "SGD::step()";
    const S lr = static_cast<S>(lr_), mu = static_cast<S>(momentum_), wd = static_cast<S>(weight_decay_);
    walk_.run(params, grads, where, [&](std::size_t i, auto p, const auto& grad) {
      g_ = grad;
      if (weight_decay_ != 0.0) g_ += wd * p;
      if (momentum_ != 0.0) {
        auto& st = detail::state_for(states_, i, p.rows(), p.cols(), false, where);
        if (st.step == 0) st.first = g_;
        else st.first = mu * st.first + g_;
        ++st.step;
        if (nesterov_) g_ += mu * st.first;
        else g_ = st.first;
      }
      p -= lr * g_;
    });
  }

 private:
  double lr_, momentum_, weight_decay_;
  bool nesterov_;
  std::vector<detail::ParameterState<S>> states_;
  detail::ParameterWalk<S> walk_;
  RowMatrix<S> g_;  // scratch, reused across parameters and steps
};

/// Adam (Kingma & Ba 2015) as torch.optim.Adam; weight_decay adds weight_decay * p to the
/// gradient (L2, coupled). With t the parameter's step count (from 1):
///   g = grad + weight_decay * p
///   m = beta1 * m + (1 - beta1) * g
///   v = beta2 * v + (1 - beta2) * g^2
///   p = p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
template <class S>
class Adam {
 public:
  using scalar_type = S;

  explicit Adam(double lr = 1e-3, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8,
                double weight_decay = 0.0)
      : Adam(lr, beta1, beta2, eps, weight_decay, false, "Adam::Adam()") {}

  [[nodiscard]] double lr() const noexcept { return lr_; }
  void set_lr(double lr) {
    detail::require_rate(lr, decoupled_ ? "AdamW::set_lr()" : "Adam::set_lr()", "lr");
    lr_ = lr;
  }
  [[nodiscard]] double beta1() const noexcept { return beta1_; }
  [[nodiscard]] double beta2() const noexcept { return beta2_; }
  [[nodiscard]] double eps() const noexcept { return eps_; }
  [[nodiscard]] double weight_decay() const noexcept { return weight_decay_; }

  template <class Params, class Grads>
  void step(Params& params, const Grads& grads) {
    const char* where = decoupled_ ? "AdamW::step()" : "Adam::step()";
    const S b1 = static_cast<S>(beta1_), b2 = static_cast<S>(beta2_), eps = static_cast<S>(eps_);
    walk_.run(params, grads, where, [&](std::size_t i, auto p, const auto& grad) {
      auto& st = detail::state_for(states_, i, p.rows(), p.cols(), true, where);
      ++st.step;
      if (decoupled_) {
        if (weight_decay_ != 0.0) p *= static_cast<S>(1.0 - lr_ * weight_decay_);
        g_ = grad;
      } else {
        g_ = grad;
        if (weight_decay_ != 0.0) g_ += static_cast<S>(weight_decay_) * p;
      }
      st.first = b1 * st.first + (S(1) - b1) * g_;
      st.second.array() = b2 * st.second.array() + (S(1) - b2) * g_.array().square();
      // Bias corrections in double, as PyTorch computes them in Python floats.
      const double t = static_cast<double>(st.step);
      const S step_size = static_cast<S>(lr_ / (1.0 - std::pow(beta1_, t)));
      const S bc2_sqrt = static_cast<S>(std::sqrt(1.0 - std::pow(beta2_, t)));
      p.array() -= step_size * st.first.array() / (st.second.array().sqrt() / bc2_sqrt + eps);
    });
  }

 protected:
  Adam(double lr, double beta1, double beta2, double eps, double weight_decay, bool decoupled, const char* where)
      : lr_(lr), beta1_(beta1), beta2_(beta2), eps_(eps), weight_decay_(weight_decay), decoupled_(decoupled) {
    detail::require_rate(lr, where, "lr");
    detail::require_beta(beta1, where, "beta1");
    detail::require_beta(beta2, where, "beta2");
    detail::require_rate(eps, where, "eps");
    detail::require_rate(weight_decay, where, "weight_decay");
  }

 private:
  double lr_, beta1_, beta2_, eps_, weight_decay_;
  bool decoupled_;
  std::vector<detail::ParameterState<S>> states_;
  detail::ParameterWalk<S> walk_;
  RowMatrix<S> g_;
};

/// AdamW (Loshchilov & Hutter 2019) as torch.optim.AdamW: the decay is decoupled from the
/// gradient, p = p * (1 - lr * weight_decay), then the Adam step on the raw gradient.
template <class S>
class AdamW : public Adam<S> {
 public:
  explicit AdamW(double lr = 1e-3, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8,
                 double weight_decay = 1e-2)
      : Adam<S>(lr, beta1, beta2, eps, weight_decay, true, "AdamW::AdamW()") {}
};

}  // namespace moe

#endif  // MOE_TRAIN_OPTIMIZER_HPP
