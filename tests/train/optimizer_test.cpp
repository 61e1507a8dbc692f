// SGD, Adam and AdamW against their update rules written out here with scalar loops, on
// every parameter of a tiny layer (matrices, expert slices, row biases, a router bias).
#include <moe/moe.hpp>
#include <moe/train/train.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "support/random.hpp"
#include "support/tiny_layer.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;
using Layer = moe::test::TinyLayer;
using moe::test::fill;
using moe::test::random_gradients;
using moe::test::snapshot;
using moe::test::tiny_layer;

void require_close(const std::vector<std::vector<double>>& got, const std::vector<std::vector<double>>& want) {
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    REQUIRE(got[i].size() == want[i].size());
    for (std::size_t j = 0; j < got[i].size(); ++j)
      REQUIRE(std::abs(got[i][j] - want[i][j]) <= 1e-12 * (1.0 + std::abs(want[i][j])));
  }
}

}  // namespace

TEST_CASE("SGD with momentum, weight decay and Nesterov follows torch.optim.SGD", "[train][optimizer]") {
  for (const bool nesterov : {false, true}) {
    for (const double momentum : {0.0, 0.9}) {
      if (nesterov && momentum == 0.0) continue;
      const double lr = 0.1, wd = 0.01;
      Layer layer = tiny_layer();
      auto grads = layer.make_gradients();
      moe::SGD<double> opt(lr, momentum, wd, nesterov);
      auto p = snapshot(layer);
      std::vector<std::vector<double>> buf;
      for (int step = 0; step < 4; ++step) {
        random_gradients(grads, 100 + 10 * static_cast<unsigned>(step));
        const auto g = snapshot(grads);
        if (buf.empty()) buf.resize(p.size());
        for (std::size_t i = 0; i < p.size(); ++i) {
          if (buf[i].empty()) buf[i].assign(p[i].size(), 0.0);
          for (std::size_t j = 0; j < p[i].size(); ++j) {
            double d = g[i][j] + wd * p[i][j];
            if (momentum != 0.0) {
              buf[i][j] = step == 0 ? d : momentum * buf[i][j] + d;
              d = nesterov ? d + momentum * buf[i][j] : buf[i][j];
            }
            p[i][j] -= lr * d;
          }
        }
        opt.step(layer, grads);
        require_close(snapshot(layer), p);
      }
    }
  }
}

TEST_CASE("Adam and AdamW follow torch.optim.Adam / AdamW", "[train][optimizer]") {
  for (const bool decoupled : {false, true}) {
    for (const double wd : {0.0, 0.05}) {
      const double lr = 0.01, b1 = 0.8, b2 = 0.95, eps = 1e-6;
      Layer layer = tiny_layer();
      auto grads = layer.make_gradients();
      moe::Adam<double> adam(lr, b1, b2, eps, wd);
      moe::AdamW<double> adamw(lr, b1, b2, eps, wd);
      auto p = snapshot(layer);
      std::vector<std::vector<double>> m(p.size()), v(p.size());
      for (int step = 1; step <= 4; ++step) {
        random_gradients(grads, 200 + 10 * static_cast<unsigned>(step));
        const auto g = snapshot(grads);
        for (std::size_t i = 0; i < p.size(); ++i) {
          if (m[i].empty()) m[i].assign(p[i].size(), 0.0), v[i].assign(p[i].size(), 0.0);
          for (std::size_t j = 0; j < p[i].size(); ++j) {
            double d = g[i][j];
            if (decoupled) p[i][j] *= 1.0 - lr * wd;
            else d += wd * p[i][j];
            m[i][j] = b1 * m[i][j] + (1.0 - b1) * d;
            v[i][j] = b2 * v[i][j] + (1.0 - b2) * d * d;
            const double m_hat = m[i][j] / (1.0 - std::pow(b1, step));
            const double v_hat = v[i][j] / (1.0 - std::pow(b2, step));
            p[i][j] -= lr * m_hat / (std::sqrt(v_hat) + eps);
          }
        }
        if (decoupled) adamw.step(layer, grads);
        else adam.step(layer, grads);
        require_close(snapshot(layer), p);
      }
    }
  }
}

TEST_CASE("an optimiser steps any policy with for_each_parameter and a zeros_like copy", "[train][optimizer]") {
  moe::FFNExperts<double, moe::Activation::relu> bank(1, 3, 4);
  fill(bank.wi(), 1);
  fill(bank.wo(), 2);
  auto grad = moe::zeros_like(bank);
  fill(grad.wi(), 3);
  fill(grad.wo(), 4);
  const RowMatrix<double> wi0 = bank.wi(), wo0 = bank.wo();
  moe::SGD<double> opt(0.5);
  opt.step(bank, grad);
  REQUIRE((bank.wi() - (wi0 - 0.5 * grad.wi())).cwiseAbs().maxCoeff() < 1e-15);
  REQUIRE((bank.wo() - (wo0 - 0.5 * grad.wo())).cwiseAbs().maxCoeff() < 1e-15);
}

TEST_CASE("optimisers refuse gradients that do not mirror the parameters", "[train][optimizer]") {
  Layer layer = tiny_layer();
  SECTION("a renamed gradient") {
    auto grads = layer.make_gradients();
    grads.router.names().weight = "other.weight";
    moe::Adam<double> opt;
    REQUIRE_THROWS_WITH(opt.step(layer, grads),
                        "Adam::step(): name of gradient 0 expected 'gate.weight', got 'other.weight'");
  }
  SECTION("a gradient of another shape") {
    auto grads = tiny_layer(5).make_gradients();
    moe::SGD<double> opt(0.1);
    REQUIRE_THROWS_WITH(opt.step(layer, grads),
                        "SGD::step(): shape of gradient 'gate.weight' expected [3, 4], got [3, 5]");
  }
  SECTION("fewer gradients than parameters") {
    auto grads = layer.make_gradients();
    grads.router.bias().resize(0);  // drops "gate.bias" from the gradient set
    moe::AdamW<double> opt;
    REQUIRE_THROWS_WITH(opt.step(layer, grads),
                        "AdamW::step(): name of gradient 1 expected 'gate.bias', got 'experts.expert_0.wi.weight'");
  }
  SECTION("bad hyperparameters") {
    REQUIRE_THROWS_WITH(moe::SGD<double>(-1.0), "SGD::SGD(): lr expected finite and >= 0, got -1");
    REQUIRE_THROWS_WITH(moe::SGD<double>(0.1, 0.0, 0.0, true),
                        "SGD::SGD(): momentum with nesterov expected > 0, got 0");
    REQUIRE_THROWS_WITH(moe::Adam<double>(1e-3, 1.0), "Adam::Adam(): beta1 expected in [0, 1), got 1");
    REQUIRE_THROWS_WITH(moe::AdamW<double>(1e-3, 0.9, 0.999, -1.0), "AdamW::AdamW(): eps expected finite and >= 0, got -1");
  }
}
