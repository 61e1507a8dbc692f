// The minimal custom policies of the docs, compiled and run exactly as the pages show them.
// Each block between `// snippet: NAME` and `// end snippet` is the text of the fenced block
// of the same name in docs/ (scripts/check_doc_snippets.py keeps the two equal).
#include <moe/moe.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "support/random.hpp"

namespace custom {

// snippet: linear_experts
template <class S>
struct LinearExperts {
  using scalar_type = S;
  moe::RowMatrix<S> w;  // [E * d, d]: expert e is rows [e d, e d + d)
  moe::Index d = 0;

  moe::Index num_experts() const { return w.rows() / d; }
  moe::Index input_dim() const { return d; }
  moe::Index output_dim() const { return d; }
  moe::Index hidden_cols() const { return 0; }  // nothing to keep for backward

  template <class Arch>
  void forward(moe::Index e, const moe::ConstMatrixRef<S>& x, moe::MatrixRef<S> /*hidden*/,
               moe::MatrixRef<S> y) const {
    y.noalias() = x * w.middleRows(e * d, d).transpose();
  }

  // Training (docs/experts.md#training): overwrite dx, accumulate expert e's slice of grad.
  template <class Arch>
  void backward(moe::Index e, const moe::ConstMatrixRef<S>& x, const moe::ConstMatrixRef<S>& /*hidden*/,
                const moe::ConstMatrixRef<S>& dy, moe::MatrixRef<S> dx, moe::MatrixRef<S> /*dhidden*/,
                LinearExperts& grad) const {
    dx.noalias() = dy * w.middleRows(e * d, d);
    grad.w.middleRows(e * d, d).noalias() += dy.transpose() * x;
  }

  template <class F>
  void for_each_parameter(F&& f) {
    f(std::string("w"), w);
  }
  template <class F>
  void for_each_parameter(F&& f) const {
    f(std::string("w"), w);
  }
};
// end snippet

// snippet: argmax_sigmoid_router
/// logits = x W^T; each token goes to its largest logit (ties: lower index) with gate
/// sigmoid(logit). A top-1 gate that is not renormalised to 1, so the task loss trains W.
template <class S>
struct ArgmaxSigmoidRouter {
  using scalar_type = S;
  moe::RowMatrix<S> w;  // [E, d]

  moe::Index num_experts() const { return w.rows(); }
  moe::Index input_dim() const { return w.cols(); }

  template <class Arch>
  void route(const moe::ConstMatrixRef<S>& x, moe::RoutingResult<S>& out, const moe::ForwardContext&) const {
    const moe::Index T = x.rows();
    out.reset(T, num_experts(), /*assignments=*/T, /*k=*/1);
    out.logits.noalias() = x * w.transpose();
    out.scores = out.logits;  // selection is made on the logits
    for (moe::Index t = 0; t < T; ++t) {
      moe::Index e = 0;
      out.logits.row(t).maxCoeff(&e);
      const auto i = static_cast<std::size_t>(t);
      out.token[i] = t;
      out.expert[i] = e;
      out.gate[i] = S(1) / (S(1) + std::exp(-out.logits(t, e)));
    }
  }

  // Training (docs/routers.md#training): dgate -> dlogits (which holds the losses' share
  // already), then dW into grad and dx += dlogits W. Consumes no loss itself.
  template <class Arch>
  void backward(const moe::RouterBackward<S>& in, ArgmaxSigmoidRouter& grad, const auto& /*losses*/) const {
    moe::MatrixRef<S> dlogits = in.dlogits;
    moe::MatrixRef<S> dx = in.dx;
    const moe::RoutingResult<S>& r = in.routing;
    for (moe::Index i = 0; i < r.size(); ++i) {
      const auto a = static_cast<std::size_t>(i);
      const S g = r.gate[a];
      dlogits(r.token[a], r.expert[a]) += in.dgate[a] * g * (S(1) - g);
    }
    grad.w.noalias() += dlogits.transpose() * in.x;
    dx.noalias() += dlogits * w;
  }

  template <class F>
  void for_each_parameter(F&& f) {
    f(std::string("router.w"), w);
  }
  template <class F>
  void for_each_parameter(F&& f) const {
    f(std::string("router.w"), w);
  }
};
// end snippet

// snippet: scaled_sum_combiner
/// y[t] = scale * sum over t's kept slots p of gate_p * y_perm[p], with a learned scale.
template <class S>
struct ScaledSumCombiner {
  using scalar_type = S;
  moe::Vector<S> scale = moe::Vector<S>::Ones(1);

  template <class Arch>
  void combine(const moe::ConstMatrixRef<S>& /*x*/, const moe::DispatchPlan<S>& plan,
               const moe::ConstMatrixRef<S>& y_perm, moe::MatrixRef<S> y, const moe::CombineContext<S>&) const {
    y.setZero();  // a token with no kept slot gets 0
    for (moe::Index p = 0; p < plan.rows(); ++p) {
      const auto i = static_cast<std::size_t>(p);
      y.row(plan.token[i]) += plan.gate[i] * y_perm.row(p);
    }
    y *= scale[0];
  }

  // Training (docs/combiners.md#training): write dy_perm and dgate_slot for every slot and
  // accumulate d scale into grad; nothing to add to dx (no path of its own from x).
  template <class Arch>
  void backward(const moe::CombinerBackward<S>& in, ScaledSumCombiner& grad, const moe::CombineContext<S>&) const {
    const moe::DispatchPlan<S>& plan = in.plan;
    moe::MatrixRef<S> dy_perm = in.dy_perm;
    for (moe::Index p = 0; p < plan.rows(); ++p) {
      const auto i = static_cast<std::size_t>(p);
      const S dot = in.dy.row(plan.token[i]).dot(in.y_perm.row(p));
      dy_perm.row(p) = scale[0] * plan.gate[i] * in.dy.row(plan.token[i]);
      in.dgate_slot[i] = scale[0] * dot;
      grad.scale[0] += plan.gate[i] * dot;
    }
  }

  template <class F>
  void for_each_parameter(F&& f) {
    f(std::string("combiner.scale"), scale);
  }
  template <class F>
  void for_each_parameter(F&& f) const {
    f(std::string("combiner.scale"), scale);
  }
};
// end snippet

// snippet: logit_penalty
/// L = 1/(2T) * sum of squared router logits: keeps the logits small (a plain cousin of the
/// z-loss). A loss on the logits, so backward adds into out.dlogits.
struct LogitPenalty {
  template <class S>
  S value(const moe::LossInput<S>& in) const {
    const auto& l = in.routing.logits;
    return l.rows() == 0 ? S(0) : S(0.5) * l.squaredNorm() / S(l.rows());
  }

  template <class Arch, class S>
  void backward(const moe::LossInput<S>& in, std::type_identity_t<S> weight, const moe::LossGradient<S>& out) const {
    const auto& l = in.routing.logits;
    if (l.rows() == 0) return;
    moe::MatrixRef<S> dlogits = out.dlogits;
    dlogits += (weight / S(l.rows())) * l;
  }
};
// end snippet

// snippet: serial_executor
/// Runs every expert of the plan here, one after the other, on the calling thread.
struct SerialExecutor {
  template <class Arch, class Experts, class S>
  void forward(const Experts& experts, const moe::ExpertStep<S>& step) const {
    moe::MatrixRef<S> hidden = step.hidden;
    moe::MatrixRef<S> y_perm = step.y_perm;
    for (moe::Index e = 0; e < step.plan.num_experts; ++e) {
      const moe::Index b = step.plan.begin(e), n = step.plan.count(e);
      if (n == 0) continue;
      experts.template forward<Arch>(e, step.x_perm.middleRows(b, n), hidden.middleRows(b, n),
                                     y_perm.middleRows(b, n));
    }
  }

  template <class Arch, class Experts, class S>
  void backward(const Experts& experts, const moe::ExpertStepBackward<S>& step, Experts& grad) const {
    moe::MatrixRef<S> dx_perm = step.dx_perm;
    moe::MatrixRef<S> dhidden = step.dhidden;
    for (moe::Index e = 0; e < step.plan.num_experts; ++e) {
      const moe::Index b = step.plan.begin(e), n = step.plan.count(e);
      if (n == 0) continue;
      experts.template backward<Arch>(e, step.x_perm.middleRows(b, n), step.hidden.middleRows(b, n),
                                      step.dy_perm.middleRows(b, n), dx_perm.middleRows(b, n),
                                      dhidden.middleRows(b, n), grad);
    }
  }
};
// end snippet

}  // namespace custom

namespace {

using moe::Index;
using moe::RowMatrix;

using Experts = custom::LinearExperts<double>;
using Router = custom::ArgmaxSigmoidRouter<double>;
using Combiner = custom::ScaledSumCombiner<double>;
using Layer = moe::MoELayer<Experts, Router, Combiner>;
using SerialLayer = moe::MoELayer<Experts, Router, Combiner, xsimd::default_arch, custom::SerialExecutor>;

static_assert(moe::TrainableExpertBank<Experts>);
static_assert(moe::TrainableRouter<Router>);
static_assert(moe::TrainableCombiner<Combiner>);
static_assert(moe::RoutingLoss<custom::LogitPenalty, double>);
static_assert(!moe::expert_traits<Experts>::needs_context);
static_assert(std::is_same_v<moe::expert_traits<Experts>::weight_type, double>);
static_assert(moe::router_traits<Router>::token_choice && !moe::router_traits<Router>::is_dense);

constexpr Index kExperts = 3;
constexpr Index kDim = 4;
constexpr Index kTokens = 9;

using moe::test::random_matrix;

template <class L = Layer>
L make_layer() {
  Experts experts{random_matrix(kExperts * kDim, kDim, 1, 0.5), kDim};
  Router router{random_matrix(kExperts, kDim, 2)};
  Combiner combiner;
  combiner.scale[0] = 0.8;
  return L(std::move(experts), std::move(router), std::move(combiner));
}

double sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }

/// The objective the gradient checks use: sum(y * G) + w * LogitPenalty.
template <class L>
double objective(const L& layer, const RowMatrix<double>& x, const RowMatrix<double>& G, double w,
                 std::vector<Index>* experts_out = nullptr) {
  moe::Workspace<double> ws;
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  const RowMatrix<double> y = layer.forward(x, ws, ctx);
  if (experts_out) *experts_out = ws.routing.expert;
  return (y.array() * G.array()).sum() + w * custom::LogitPenalty{}.value(moe::LossInput<double>{ws.routing});
}

struct Block {
  std::string name;
  double* data;
  Index size;
};

template <class P>
std::vector<Block> blocks_of(P& p) {
  std::vector<Block> out;
  p.for_each_parameter([&](const std::string& name, auto& b) { out.push_back({name, b.data(), b.size()}); });
  return out;
}

}  // namespace

TEST_CASE("custom policies from the docs: a layer of them runs forward", "[custom][layer]") {
  const Layer layer = make_layer();
  const RowMatrix<double> x = random_matrix(kTokens, kDim, 3);
  moe::Workspace<double> ws;
  const RowMatrix<double> y = layer.forward(x, ws);

  // By hand: e = argmax_e (x_t . W_router[e]), y_t = scale * sigmoid(logit) * W_e x_t.
  const auto& wr = layer.router().w;
  const auto& we = layer.experts().w;
  for (Index t = 0; t < kTokens; ++t) {
    Index e = 0;
    for (Index j = 1; j < kExperts; ++j)
      if (x.row(t).dot(wr.row(j)) > x.row(t).dot(wr.row(e))) e = j;
    const double gate = sigmoid(x.row(t).dot(wr.row(e)));
    const RowMatrix<double> expected = 0.8 * gate * (x.row(t) * we.middleRows(e * kDim, kDim).transpose());
    for (Index c = 0; c < kDim; ++c) CHECK(y(t, c) == Approx(expected(0, c)).margin(1e-12));
  }
  CHECK(ws.stats.tokens == kTokens);
  Index load = 0;
  for (Index l : ws.stats.expert_load) load += l;
  CHECK(load == kTokens);
}

TEST_CASE("custom policies from the docs: backward matches finite differences", "[custom][layer][gradients]") {
  Layer layer = make_layer();
  const RowMatrix<double> x = random_matrix(kTokens, kDim, 3);
  const RowMatrix<double> G = random_matrix(kTokens, kDim, 4);
  const double w = 0.3;

  moe::Workspace<double> ws;
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  (void)layer.forward(x, ws, ctx);
  auto grads = layer.make_gradients();
  RowMatrix<double> dx(kTokens, kDim);
  // dL/dy = G for L = sum(y * G); the loss list adds w * LogitPenalty.
  layer.backward(G, dx, ws, grads, moe::losses(moe::weighted(custom::LogitPenalty{}, w)));

  std::vector<Index> routed;
  (void)objective(layer, x, G, w, &routed);
  const double h = 1e-6;

  SECTION("every parameter") {
    const auto params = blocks_of(layer);
    const auto grad_blocks = blocks_of(grads);
    REQUIRE(params.size() == 3);
    REQUIRE(grad_blocks.size() == params.size());
    for (std::size_t b = 0; b < params.size(); ++b) {
      INFO(params[b].name);
      REQUIRE(grad_blocks[b].name == params[b].name);
      REQUIRE(grad_blocks[b].size == params[b].size);
      for (Index i = 0; i < params[b].size; ++i) {
        double& v = params[b].data[i];
        const double v0 = v;
        std::vector<Index> plus_routed, minus_routed;
        v = v0 + h;
        const double lp = objective(layer, x, G, w, &plus_routed);
        v = v0 - h;
        const double lm = objective(layer, x, G, w, &minus_routed);
        v = v0;
        REQUIRE(plus_routed == routed);  // the routing did not flip under the perturbation
        REQUIRE(minus_routed == routed);
        CHECK(grad_blocks[b].data[i] == Approx((lp - lm) / (2 * h)).margin(1e-7));
      }
    }
  }

  SECTION("the input") {
    for (Index t = 0; t < kTokens; ++t)
      for (Index c = 0; c < kDim; ++c) {
        RowMatrix<double> xp = x, xm = x;
        xp(t, c) += h;
        xm(t, c) -= h;
        std::vector<Index> plus_routed, minus_routed;
        const double lp = objective(layer, xp, G, w, &plus_routed);
        const double lm = objective(layer, xm, G, w, &minus_routed);
        REQUIRE(plus_routed == routed);
        REQUIRE(minus_routed == routed);
        CHECK(dx(t, c) == Approx((lp - lm) / (2 * h)).margin(1e-7));
      }
  }
}

TEST_CASE("custom policies from the docs: a few SGD steps reduce a regression loss", "[custom][layer][train]") {
  // Fit y to a target made by a perturbed copy of the same layer: L = 1/2 |y - target|^2.
  Layer layer = make_layer();
  Layer teacher = make_layer();
  teacher.experts().w += random_matrix(kExperts * kDim, kDim, 9, 0.3);
  const RowMatrix<double> x = random_matrix(32, kDim, 5);
  moe::Workspace<double> tws;
  const RowMatrix<double> target = teacher.forward(x, tws);

  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  auto loss_and_grads = [&](auto& grads) {
    moe::Workspace<double> ws;
    const RowMatrix<double> y = layer.forward(x, ws, ctx);
    const RowMatrix<double> dy = y - target;
    grads.set_zero();
    (void)layer.backward(dy, ws, grads);  // LossWeights{}: no auxiliary loss
    return 0.5 * dy.squaredNorm();
  };
  auto grads = layer.make_gradients();
  const double first = loss_and_grads(grads);
  double last = first;
  for (int step = 0; step < 20; ++step) {
    const auto params = blocks_of(layer);
    const auto g = blocks_of(grads);
    for (std::size_t b = 0; b < params.size(); ++b)
      for (Index i = 0; i < params[b].size; ++i) params[b].data[i] -= 0.01 * g[b].data[i];
    last = loss_and_grads(grads);
  }
  // Gradient descent with a small step lowers a smooth loss; the routing may flip on the way,
  // so only the overall decrease is asserted.
  CHECK(first > 0);
  CHECK(last < first);
}

TEST_CASE("custom loss from the docs: gradient matches a finite difference of its value", "[custom][loss]") {
  moe::RoutingResult<double> routing;
  routing.reset(5, kExperts, 5, 1);
  routing.logits = random_matrix(5, kExperts, 7);
  const moe::LossInput<double> in{routing};
  const custom::LogitPenalty loss;
  // value = 1/(2T) sum l^2 by definition.
  CHECK(loss.value(in) == Approx(0.5 * routing.logits.squaredNorm() / 5.0));

  const double weight = 0.7;
  RowMatrix<double> dlogits = RowMatrix<double>::Constant(5, kExperts, 0.25);  // backward adds
  loss.backward<xsimd::default_arch>(in, weight, moe::LossGradient<double>{dlogits});
  const double h = 1e-6;
  for (Index t = 0; t < 5; ++t)
    for (Index e = 0; e < kExperts; ++e) {
      const double l0 = routing.logits(t, e);
      routing.logits(t, e) = l0 + h;
      const double vp = loss.value(in);
      routing.logits(t, e) = l0 - h;
      const double vm = loss.value(in);
      routing.logits(t, e) = l0;
      CHECK(dlogits(t, e) - 0.25 == Approx(weight * (vp - vm) / (2 * h)).margin(1e-8));
    }
}

TEST_CASE("custom executor from the docs: same results as LocalExecutor", "[custom][executor]") {
  const Layer local = make_layer();
  const SerialLayer serial = make_layer<SerialLayer>();
  const RowMatrix<double> x = random_matrix(kTokens, kDim, 3);
  const RowMatrix<double> G = random_matrix(kTokens, kDim, 4);
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  moe::Workspace<double> ws_local, ws_serial;
  const RowMatrix<double> y_local = local.forward(x, ws_local, ctx);
  const RowMatrix<double> y_serial = serial.forward(x, ws_serial, ctx);
  CHECK(y_serial == y_local);  // the same products on the same slabs

  auto g_local = local.make_gradients();
  auto g_serial = serial.make_gradients();
  const RowMatrix<double> dx_local = local.backward(G, ws_local, g_local);
  const RowMatrix<double> dx_serial = serial.backward(G, ws_serial, g_serial);
  CHECK(dx_serial == dx_local);
  CHECK(g_serial.experts.w == g_local.experts.w);
  CHECK(g_serial.router.w == g_local.router.w);
  CHECK(g_serial.combiner.scale == g_local.combiner.scale);
}
