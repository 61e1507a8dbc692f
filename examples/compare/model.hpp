// moe-compare's model: an input layer, one or more pre-norm residual MoE feed-forward blocks,
// a final layer norm and a linear head; cross-entropy over the characters (text) or mean
// squared error (synthetic). Forward and backward of everything outside the MoE blocks are
// written here with Eigen; the blocks are the library's layers.
#ifndef MOE_EXAMPLES_COMPARE_MODEL_HPP
#define MOE_EXAMPLES_COMPARE_MODEL_HPP

#include "blocks.hpp"
#include "task.hpp"

#include <cmath>
#include <memory>
#include <string>
#include <vector>

namespace moe::examples::compare {

struct ModelConfig {
  Index layers = 1;   ///< MoE blocks
  Index embed = 8;    ///< text: width of one character's embedding; d = context x embed
  double clip = 1.0;  ///< global gradient-norm clipping
};

/// The parameters outside the MoE blocks (or their gradients: the same shapes), named for
/// the optimiser's lockstep walk.
struct Trunk {
  RowMatrix<S> input;  ///< text: embedding [V, e]; synthetic: W_in [d, d_in]
  std::vector<RowMatrix<S>> norm_gain, norm_bias;  ///< per block, [1, d]
  RowMatrix<S> final_gain, final_bias;              ///< [1, d]
  RowMatrix<S> head, head_bias;                     ///< [O, d], [1, O]

  template <class F>
  void for_each_parameter(F&& f) {
    f(std::string("input"), input);
    for (std::size_t l = 0; l < norm_gain.size(); ++l) {
      f("norm." + std::to_string(l) + ".gain", norm_gain[l]);
      f("norm." + std::to_string(l) + ".bias", norm_bias[l]);
    }
    f(std::string("final_norm.gain"), final_gain);
    f(std::string("final_norm.bias"), final_bias);
    f(std::string("head.weight"), head);
    f(std::string("head.bias"), head_bias);
  }
  template <class F>
  void for_each_parameter(F&& f) const {
    const_cast<Trunk*>(this)->for_each_parameter([&](const std::string& n, const RowMatrix<S>& p) { f(n, p); });
  }
  [[nodiscard]] Trunk zeros_like() const {
    Trunk z = *this;
    z.for_each_parameter([](const std::string&, RowMatrix<S>& p) { p.setZero(); });
    return z;
  }
};

/// Layer norm over each row, eps 1e-5; keeps x-hat and 1/sigma for backward.
struct LayerNorm {
  RowMatrix<S> xhat;
  Vector<S> rstd;

  void forward(const RowMatrix<S>& x, const RowMatrix<S>& gain, const RowMatrix<S>& bias, RowMatrix<S>& y) {
    const Index n = x.rows(), d = x.cols();
    xhat.resize(n, d);
    rstd.resize(n);
    y.resize(n, d);
    for (Index t = 0; t < n; ++t) {
      const S mean = x.row(t).mean();
      const S var = (x.row(t).array() - mean).square().mean();
      rstd[t] = S(1) / std::sqrt(var + S(1e-5));
      xhat.row(t) = (x.row(t).array() - mean) * rstd[t];
      y.row(t) = xhat.row(t).cwiseProduct(gain) + bias;
    }
  }

  /// dx (+)= dL/dx; dgain and dbias accumulate.
  void backward(const RowMatrix<S>& dy, const RowMatrix<S>& gain, RowMatrix<S>& dgain, RowMatrix<S>& dbias,
                RowMatrix<S>& dx, bool accumulate) const {
    const Index n = dy.rows();
    if (!accumulate) dx.setZero(n, dy.cols());
    for (Index t = 0; t < n; ++t) {
      const RowVector<S> dxhat = dy.row(t).cwiseProduct(gain);
      const S m1 = dxhat.mean();
      const S m2 = dxhat.cwiseProduct(xhat.row(t)).mean();
      dx.row(t).array() += rstd[t] * (dxhat.array() - m1 - xhat.row(t).array() * m2);
    }
    dgain += dy.cwiseProduct(xhat).colwise().sum();
    dbias += dy.colwise().sum();
  }
};

class Model {
 public:
  /// The model around one policy's blocks. Every trunk weight is seeded by `seed` alone, so
  /// every policy starts from the same trunk.
  Model(const Task& task, const Policy& policy, const BlockConfig& block, const ModelConfig& cfg)
      : task_(&task), cfg_(cfg), d_(block.d) {
    const Index O = task.outputs();
    const std::uint64_t seed = block.seed;
    if (task.kind == TaskKind::text) {
      trunk_.input.resize(task.vocab(), cfg.embed);
      fill_normal(trunk_.input, seed * 1000 + 50, 1.0);
    } else {
      trunk_.input.resize(d_, task.x_train.cols());
      fill_normal(trunk_.input, seed * 1000 + 50, 1.0 / std::sqrt(double(task.x_train.cols())));
    }
    for (Index l = 0; l < cfg.layers; ++l) {
      trunk_.norm_gain.push_back(RowMatrix<S>::Ones(1, d_));
      trunk_.norm_bias.push_back(RowMatrix<S>::Zero(1, d_));
      BlockConfig c = block;
      c.seed = block.seed + 7919 * static_cast<std::uint64_t>(l);
      blocks_.push_back(policy.make(c));
    }
    trunk_.final_gain = RowMatrix<S>::Ones(1, d_);
    trunk_.final_bias = RowMatrix<S>::Zero(1, d_);
    trunk_.head.resize(O, d_);
    fill_normal(trunk_.head, seed * 1000 + 51, 1.0 / std::sqrt(double(d_)));
    trunk_.head_bias = RowMatrix<S>::Zero(1, O);
    grads_ = trunk_.zeros_like();
    opt_ = std::make_unique<Adam<S>>(block.lr);
    h_.resize(static_cast<std::size_t>(cfg.layers + 1));
    a_.resize(static_cast<std::size_t>(cfg.layers));
    norms_.resize(static_cast<std::size_t>(cfg.layers));
  }

  /// Forward of one batch; returns the mean loss (nats per character, or the MSE per entry).
  double forward(const Batch& b, const ForwardContext& ctx) {
    const Index n = b.size;
    RowMatrix<S>& h0 = h_[0];
    if (task_->kind == TaskKind::text) {
      const Index C = task_->context, e = cfg_.embed;
      h0.resize(n, d_);
      for (Index t = 0; t < n; ++t)
        for (Index c = 0; c < C; ++c)
          h0.block(t, c * e, 1, e) = trunk_.input.row(b.window[static_cast<std::size_t>(t * C + c)]);
    } else {
      h0.noalias() = b.x * trunk_.input.transpose();
    }
    for (std::size_t l = 0; l < blocks_.size(); ++l) {
      norms_[l].forward(h_[l], trunk_.norm_gain[l], trunk_.norm_bias[l], a_[l]);
      ForwardContext block_ctx = ctx;  // each block tags its telemetry records with its index
      block_ctx.layer_index = static_cast<Index>(l);
      blocks_[l]->forward(a_[l], out_, block_ctx);
      h_[l + 1] = h_[l] + out_;
    }
    final_.forward(h_.back(), trunk_.final_gain, trunk_.final_bias, z_);
    logits_.noalias() = z_ * trunk_.head.transpose();
    logits_.rowwise() += trunk_.head_bias.row(0);
    double loss = 0;
    dlogits_.resize(n, logits_.cols());
    if (task_->kind == TaskKind::text) {
      for (Index t = 0; t < n; ++t) {
        const S m = logits_.row(t).maxCoeff();
        const RowVector<S> p = (logits_.row(t).array() - m).exp().matrix();
        const S sum = p.sum();
        const auto target = b.next[static_cast<std::size_t>(t)];
        loss += double(std::log(sum) + m - logits_(t, target));
        dlogits_.row(t) = p / (sum * S(n));
        dlogits_(t, target) -= S(1) / S(n);
      }
      return loss / double(n);
    }
    const RowMatrix<S> diff = logits_ - b.y;
    dlogits_ = diff * S(2.0 / double(n * logits_.cols()));
    return diff.template cast<double>().array().square().mean();
  }

  /// Backward of the last forward (which ran in training mode), then clipping and one step.
  void backward_and_step(const Batch& b) {
    backward(b);
    step();
  }

  /// The gradients of the last forward's loss: the trunk's into trunk_gradients(), the
  /// blocks' into their own.
  void backward(const Batch& b) {
    grads_.for_each_parameter([](const std::string&, RowMatrix<S>& g) { g.setZero(); });
    grads_.head.noalias() = dlogits_.transpose() * z_;
    grads_.head_bias = dlogits_.colwise().sum();
    dz_.noalias() = dlogits_ * trunk_.head;
    final_.backward(dz_, trunk_.final_gain, grads_.final_gain, grads_.final_bias, dh_, false);
    for (std::size_t l = blocks_.size(); l-- > 0;) {
      blocks_[l]->backward(dh_, da_);
      norms_[l].backward(da_, trunk_.norm_gain[l], grads_.norm_gain[l], grads_.norm_bias[l], dh_, true);
    }
    if (task_->kind == TaskKind::text) {
      const Index C = task_->context, e = cfg_.embed;
      for (Index t = 0; t < b.size; ++t)
        for (Index c = 0; c < C; ++c)
          grads_.input.row(b.window[static_cast<std::size_t>(t * C + c)]) += dh_.block(t, c * e, 1, e);
    } else {
      grads_.input.noalias() = dh_.transpose() * b.x;
    }
  }

  /// Clips the global gradient norm (trunk and blocks together) to ModelConfig::clip, then
  /// steps every optimiser.
  void step() {
    double sq = 0;
    grads_.for_each_parameter([&](const std::string&, const RowMatrix<S>& g) { sq += g.template cast<double>().squaredNorm(); });
    for (const auto& blk : blocks_) sq += blk->grad_squared_norm();
    const double norm = std::sqrt(sq);
    if (norm > cfg_.clip) {
      const double f = cfg_.clip / (norm + 1e-6);
      grads_.for_each_parameter([&](const std::string&, RowMatrix<S>& g) { g *= static_cast<S>(f); });
      for (const auto& blk : blocks_) blk->scale_grads(f);
    }
    opt_->step(trunk_, grads_);
    for (const auto& blk : blocks_) blk->step();
  }

  [[nodiscard]] const std::vector<std::unique_ptr<Block>>& blocks() const { return blocks_; }
  [[nodiscard]] Trunk& trunk() noexcept { return trunk_; }
  [[nodiscard]] const Trunk& trunk_gradients() const noexcept { return grads_; }
  [[nodiscard]] const RowMatrix<S>& logits() const { return logits_; }

 private:
  const Task* task_;
  ModelConfig cfg_;
  Index d_;
  Trunk trunk_, grads_;
  std::unique_ptr<Adam<S>> opt_;
  std::vector<std::unique_ptr<Block>> blocks_;
  std::vector<RowMatrix<S>> h_, a_;
  std::vector<LayerNorm> norms_;
  LayerNorm final_;
  RowMatrix<S> out_, z_, logits_, dlogits_, dz_, dh_, da_;
};

}  // namespace moe::examples::compare

#endif  // MOE_EXAMPLES_COMPARE_MODEL_HPP
