// Convolutional experts (CausalConvExperts): the layer's output against the rule written as
// loops over tokens and their sequences, finite differences (double) for the input, the
// kernels, the SwiGLU weights and the router (several sequence lengths, kernel sizes, k,
// a capacity that drops tokens), thread-count independence, and the errors.
#include <moe/core/thread_pool.hpp>
#include <moe/expert/conv_experts.hpp>
#include <moe/layer/moe_layer.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <string>
#include <vector>

#include "support/errors.hpp"
#include "support/finite_difference.hpp"
#include "support/gradient_check.hpp"
#include "support/random.hpp"

namespace conv_experts_test {

using moe::Index;
using moe::RowMatrix;

template <class S>
moe::ConvMoE<S> make_conv_layer(Index E, Index d, Index ff, Index w, Index k, unsigned seed) {
  moe::CausalConvExperts<moe::SwiGLUExperts<S>> experts(moe::test::swiglu<S>(E, d, ff, seed), w);
  moe::test::fill(experts.kernels(), seed + 2, 0.6);
  RowMatrix<S> gate(E, d);
  moe::test::fill(gate, seed + 3);
  return moe::ConvMoE<S>(std::move(experts), moe::SoftmaxTopKRouter<S>(std::move(gate), k));
}

/// y_t = sum over t's top-k experts (softmax, renormalised) of SwiGLU_e(u_e,t), u_e,t =
/// sum_{tau <= min(w-1, position)} c_e[tau] * x_{t-tau}: every piece as plain loops.
RowMatrix<double> conv_reference(const moe::ConvMoE<double>& layer, const RowMatrix<double>& x, Index seq) {
  const Index T = x.rows(), d = x.cols(), E = layer.num_experts(), k = layer.router().k();
  const auto& bank = layer.experts();
  const auto& sw = bank.inner();
  const Index ff = sw.d_ff(), w = bank.kernel_size();
  const Index S = seq == 0 ? T : seq;
  RowMatrix<double> y = RowMatrix<double>::Zero(T, d);
  for (Index t = 0; t < T; ++t) {
    std::vector<double> p(static_cast<std::size_t>(E));
    double mx = -1e300;
    for (Index e = 0; e < E; ++e) {
      double z = 0;
      for (Index i = 0; i < d; ++i) z += x(t, i) * layer.router().weight()(e, i);
      p[static_cast<std::size_t>(e)] = z;
      mx = std::max(mx, z);
    }
    for (auto& v : p) v = std::exp(v - mx);  // unnormalised: the renormalisation over the kept cancels the sum
    std::vector<Index> order(static_cast<std::size_t>(E));
    for (Index e = 0; e < E; ++e) order[static_cast<std::size_t>(e)] = e;
    std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) {
      return p[static_cast<std::size_t>(a)] > p[static_cast<std::size_t>(b)];
    });
    double kept = 0;
    for (Index j = 0; j < k; ++j) kept += p[static_cast<std::size_t>(order[static_cast<std::size_t>(j)])];
    for (Index j = 0; j < k; ++j) {
      const Index e = order[static_cast<std::size_t>(j)];
      const double g = p[static_cast<std::size_t>(e)] / kept;
      std::vector<double> u(static_cast<std::size_t>(d), 0.0);
      for (Index tau = 0; tau < w && tau <= t % S; ++tau)
        for (Index i = 0; i < d; ++i) u[static_cast<std::size_t>(i)] += bank.conv(e)(tau, i) * x(t - tau, i);
      std::vector<double> a(static_cast<std::size_t>(ff));
      for (Index f = 0; f < ff; ++f) {
        double gt = 0, up = 0;
        for (Index i = 0; i < d; ++i) {
          gt += u[static_cast<std::size_t>(i)] * sw.gate_proj(e)(f, i);
          up += u[static_cast<std::size_t>(i)] * sw.up_proj(e)(f, i);
        }
        a[static_cast<std::size_t>(f)] = gt / (1 + std::exp(-gt)) * up;
      }
      for (Index o = 0; o < d; ++o) {
        double v = 0;
        for (Index f = 0; f < ff; ++f) v += a[static_cast<std::size_t>(f)] * sw.down_proj(e)(o, f);
        y(t, o) += g * v;
      }
    }
  }
  return y;
}

}  // namespace conv_experts_test

using conv_experts_test::conv_reference;
using conv_experts_test::make_conv_layer;
using moe::Index;
using moe::RowMatrix;

TEST_CASE("ConvMoE: output equals the causal convolution then SwiGLU, per sequence, as loops",
          "[expert][conv]") {
  struct Case {
    Index E, d, ff, w, k, B, S;
  };
  for (const Case c : {Case{4, 6, 5, 3, 2, 2, 5}, Case{3, 5, 4, 1, 1, 3, 4}, Case{5, 4, 3, 4, 3, 1, 7},
                       Case{2, 3, 2, 6, 1, 2, 3}}) {  // the last: kernel longer than the sequence
    INFO("E " << c.E << " d " << c.d << " w " << c.w << " k " << c.k << " B " << c.B << " S " << c.S);
    const auto layer = make_conv_layer<double>(c.E, c.d, c.ff, c.w, c.k, 21);
    RowMatrix<double> x(c.B * c.S, c.d);
    moe::test::fill(x, 22);
    moe::Workspace<double> ws;
    moe::ForwardContext ctx;
    ctx.sequence_length = c.S;
    const RowMatrix<double> y = layer.forward(x, ws, ctx);
    CHECK(moe::test::relative_gap(y, conv_reference(layer, x, c.S)) < 1e-12);
    // One sequence for the whole batch (sequence_length 0): the convolution crosses B.
    const RowMatrix<double> whole = layer.forward(x, ws, {});
    CHECK(moe::test::relative_gap(whole, conv_reference(layer, x, 0)) < 1e-12);
  }
}

TEST_CASE("ConvMoE: a kernel of size 1 with c = 1 is the SwiGLU layer on x", "[expert][conv]") {
  auto layer = make_conv_layer<double>(4, 6, 5, 1, 2, 31);
  layer.experts().kernels().setOnes();
  const moe::MixtralMoE<double> plain(layer.experts().inner(), layer.router());
  RowMatrix<double> x(9, 6);
  moe::test::fill(x, 32);
  moe::Workspace<double> a, b;
  CHECK(layer.forward(x, a, {}) == plain.forward(x, b, {}));
}

TEST_CASE("ConvMoE backward matches finite differences: input, kernels, SwiGLU, router",
          "[expert][conv][backward]") {
  struct Case {
    Index E, d, ff, w, k, B, S;
    double capacity;  // 0: dropless
  };
  for (const Case c : {Case{4, 5, 4, 3, 2, 2, 6, 0}, Case{3, 4, 3, 2, 1, 3, 4, 0}, Case{5, 3, 4, 4, 3, 1, 8, 0},
                       Case{4, 4, 3, 3, 2, 2, 5, 0.5}}) {
    INFO("E " << c.E << " w " << c.w << " k " << c.k << " B " << c.B << " S " << c.S << " capacity " << c.capacity);
    auto layer = make_conv_layer<double>(c.E, c.d, c.ff, c.w, c.k, 41);
    if (c.capacity > 0) layer.set_capacity(moe::Capacity::from_factor(c.capacity));
    RowMatrix<double> x(c.B * c.S, c.d), G(c.B * c.S, c.d);
    moe::test::fill(x, 42);
    moe::test::fill(G, 43);
    moe::ForwardContext ctx;
    ctx.sequence_length = c.S;
    ctx.mode = moe::Mode::training;
    moe::Workspace<double> ws;
    const auto loss = [&] {
      moe::Workspace<double> w2;
      return (layer.forward(x, w2, ctx).array() * G.array()).sum();
    };
    RowMatrix<double> y = layer.forward(x, ws, ctx);
    auto grads = layer.make_gradients();
    const RowMatrix<double> dx = layer.backward(G, ws, grads);
    CHECK(moe::test::relative_gap(dx, moe::test::numeric_gradient(x, loss)) < 1e-7);
    moe::test::check_parameter_gradients(layer, grads, loss, 1e-7);
    if (c.capacity > 0) CHECK(ws.stats.dropped > 0);  // the case drops tokens
  }
}

TEST_CASE("ConvMoE: results are bit-identical for any thread count", "[expert][conv][threads]") {
  const auto layer = make_conv_layer<float>(4, 8, 6, 3, 2, 51);
  RowMatrix<float> x(3 * 40, 8), G(3 * 40, 8);
  moe::test::fill(x, 52);
  moe::test::fill(G, 53);
  const auto run = [&](moe::ThreadPool* pool) {
    moe::ForwardContext ctx;
    ctx.sequence_length = 40;
    ctx.mode = moe::Mode::training;
    ctx.pool = pool;
    moe::Workspace<float> ws;
    RowMatrix<float> y = layer.forward(x, ws, ctx);
    auto grads = layer.make_gradients();
    RowMatrix<float> dx = layer.backward(G, ws, grads);
    std::vector<RowMatrix<float>> out{y, dx};
    grads.for_each_parameter([&](const std::string&, const auto& g) { out.emplace_back(g); });
    return out;
  };
  const auto serial = run(nullptr);
  for (const int threads : {1, 2, 3}) {
    moe::ThreadPool pool(threads);
    const auto par = run(&pool);
    REQUIRE(par.size() == serial.size());
    for (std::size_t i = 0; i < par.size(); ++i) CHECK(par[i] == serial[i]);
  }
}

TEST_CASE("CausalConvExperts: parameters by expert, then the inner bank's", "[expert][conv]") {
  moe::CausalConvExperts<moe::SwiGLUExperts<float>> bank(moe::SwiGLUExperts<float>(2, 4, 3), 3);
  CHECK(bank.hidden_cols() == 4 + 9);
  CHECK(bank.kernel_size() == 3);
  bank.conv(1)(2, 3) = 7.0f;
  CHECK(bank.kernels()(5, 3) == 7.0f);
  std::vector<std::string> names;
  bank.for_each_parameter([&](const std::string& n, const auto& block) {
    names.push_back(n);
    if (n == "experts.0.conv.weight") CHECK((block.rows() == 3 && block.cols() == 4));
  });
  CHECK(names.size() == 2 + 6);
  CHECK(names[0] == "experts.0.conv.weight");
  CHECK(names[1] == "experts.1.conv.weight");
  CHECK(names[2] == "experts.0.gate_proj.weight");
}

TEST_CASE("CausalConvExperts names what it refuses", "[expert][conv][errors]") {
  using Bank = moe::CausalConvExperts<moe::SwiGLUExperts<double>>;
  moe::test::require_invalid([] { Bank(moe::SwiGLUExperts<double>(2, 4, 3), 0); },
                             {"CausalConvExperts::CausalConvExperts(): kernel_size expected >= 1, got 0"});
  Bank bank(moe::SwiGLUExperts<double>(2, 4, 3), 2);
  moe::test::require_invalid([&] { (void)bank.conv(2); },
                             {"CausalConvExperts::conv(): expert index expected in [0, 2), got 2"});
  RowMatrix<double> x(3, 4), hidden(3, bank.hidden_cols()), y(3, 4), dx(3, 4), dh(3, bank.hidden_cols());
  x.setOnes();
  const moe::ForwardContext fc;
  // The dense path has no token positions.
  const moe::ExpertContext<double> dense{fc, x};
  moe::test::require_invalid([&] { bank.forward(0, x, hidden, y, dense); },
                             {"CausalConvExperts::forward(): ExpertContext::tokens expected the token of each slab row",
                              "got none"});
  const std::vector<Index> tokens{0, 1, 2};
  const moe::ExpertContext<double> sparse{fc, x, tokens};
  bank.forward(0, x, hidden, y, sparse);
  Bank grad = moe::zeros_like(bank);
  moe::test::require_invalid([&] { bank.backward(0, x, hidden, y, dx, dh, grad, sparse); },
                             {"CausalConvExperts::backward(): ExpertContext::input_grad expected the layer's dx",
                              "got nullptr"});
  const std::vector<Index> two{0, 1};
  const moe::ExpertContext<double> short_ctx{fc, x, two};
  moe::test::require_invalid([&] { bank.forward(0, x, hidden, y, short_ctx); },
                             {"CausalConvExperts::forward(): ExpertContext::tokens length expected 3, got 2"});
  bank.kernels().resize(3, 4);
  moe::test::require_invalid([&] { bank.check_shapes(); },
                             {"CausalConvExperts::check_shapes(): kernels() expected shape [4, 4], got [3, 4]"});
}
