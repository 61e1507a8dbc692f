// HashRouter (Roller et al. 2021): table lookup, random balanced tables, the stateless hash,
// and what it writes where a learned router would write logits.
#include <moe/layer/moe_layer.hpp>
#include <moe/core/traits.hpp>
#include <moe/router/hash_router.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <random>
#include <vector>

#include "support/reference_moe.hpp"
#include "support/random.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;

using moe::test::random_matrix;

moe::ForwardContext with_ids(const std::vector<std::int64_t>& ids) {
  moe::ForwardContext ctx;
  ctx.token_ids = ids;
  return ctx;
}

}  // namespace

TEST_CASE("hash routing by a table: expert = table[id], gate 1, zero logits, one-hot scores", "[router][hash]") {
  const std::vector<Index> table = {2, 0, 1, 1, 3, 0, 2};
  moe::HashRouter<float> router(table, 4, 5);
  const std::vector<std::int64_t> ids = {6, 0, 0, 4, 3, 1, 5, 2, 6};
  const Index T = Index(ids.size());
  moe::RoutingResult<float> out;
  router.route(RowMatrix<float>::Random(T, 5), out, with_ids(ids));
  REQUIRE(out.size() == T);
  REQUIRE(out.k == 1);
  RowMatrix<float> onehot = RowMatrix<float>::Zero(T, 4);
  for (Index t = 0; t < T; ++t) {
    const Index e = table[size_t(ids[size_t(t)])];
    REQUIRE(out.token[size_t(t)] == t);
    REQUIRE(out.expert[size_t(t)] == e);
    REQUIRE(out.gate[size_t(t)] == 1.0f);
    REQUIRE(router.expert_of(ids[size_t(t)]) == e);
    onehot(t, e) = 1.0f;
  }
  REQUIRE(out.dense_gates() == onehot);
  REQUIRE(out.scores == onehot);
  REQUIRE(out.logits.rows() == T);
  REQUIRE(out.logits.cols() == 4);
  REQUIRE(out.logits.cwiseAbs().maxCoeff() == 0.0f);
}

TEST_CASE("a random balanced table gives every expert vocab/E ids, +-1, the same for the same seed",
          "[router][hash]") {
  for (const Index vocab : {Index{1}, Index{7}, Index{50}, Index{1001}}) {
    for (const Index E : {Index{1}, Index{3}, Index{8}}) {
      INFO("vocab = " << vocab << ", E = " << E);
      const auto a = moe::HashRouter<double>::balanced(vocab, E, 4, 123);
      const auto b = moe::HashRouter<double>::balanced(vocab, E, 4, 123);
      REQUIRE(a.table() == b.table());
      REQUIRE(a.vocab_size() == vocab);
      std::vector<Index> count(size_t(E), 0);
      for (Index e : a.table()) {
        REQUIRE(e >= 0);
        REQUIRE(e < E);
        ++count[size_t(e)];
      }
      for (Index n : count) {
        REQUIRE(n >= vocab / E);
        REQUIRE(n <= (vocab + E - 1) / E);
      }
    }
  }
  // Shuffled: another seed gives another table, and the table is not the sorted id % E.
  const auto a = moe::HashRouter<double>::balanced(1000, 8, 4, 1);
  const auto b = moe::HashRouter<double>::balanced(1000, 8, 4, 2);
  REQUIRE(a.table() != b.table());
  std::vector<Index> plain(1000);
  for (Index v = 0; v < 1000; ++v) plain[size_t(v)] = v % 8;
  REQUIRE(a.table() != plain);
}

TEST_CASE("stateless hash routing: hash(id) mod E, any id >= 0, spread evenly", "[router][hash]") {
  const auto router = moe::HashRouter<double>::stateless(8, 3, 77);
  REQUIRE(router.is_stateless());
  REQUIRE(router.vocab_size() == 0);
  const moe::CounterRng rng(77, 0);
  std::vector<Index> count(8, 0);
  for (std::int64_t id = 0; id < 8000; ++id) {
    const Index e = router.expert_of(id);
    REQUIRE(e == Index(rng.bits(std::uint64_t(id), 0) % 8));
    ++count[size_t(e)];
  }
  // Binomial(8000, 1/8): mean 1000, sd ~30; 200 is over six sd.
  for (Index n : count) {
    REQUIRE(n > 800);
    REQUIRE(n < 1200);
  }
  REQUIRE_NOTHROW(router.expert_of(std::int64_t{1} << 62));
  const std::vector<std::int64_t> ids = {5, 123456789, 0};
  moe::RoutingResult<double> out;
  router.route(RowMatrix<double>::Zero(3, 3), out, with_ids(ids));
  for (size_t t = 0; t < 3; ++t) REQUIRE(out.expert[t] == router.expert_of(ids[t]));
}

TEST_CASE("hash routing in a layer: each token gets its expert's output", "[router][hash][layer]") {
  const Index E = 3, d = 5, ff = 4, T = 8;
  moe::SwiGLUExperts<double> experts(E, d, ff);
  experts.gate_up() = random_matrix(E * 2 * ff, d, 1, 0.5);
  experts.down() = random_matrix(E * d, ff, 2, 0.5);
  const std::vector<Index> table = {1, 2, 0, 0, 2};
  const moe::HashMoE<double> layer(experts, moe::HashRouter<double>(table, E, d));
  const auto x = random_matrix(T, d, 3);
  const std::vector<std::int64_t> ids = {4, 0, 1, 2, 3, 4, 1, 0};
  moe::Workspace<double> ws;
  const RowMatrix<double> y = layer.forward(x, ws, with_ids(ids));
  for (Index t = 0; t < T; ++t) {
    const Index e = table[size_t(ids[size_t(t)])];
    const auto ref = moe::test::ref_swiglu(x.row(t), experts.gate_proj(e), experts.up_proj(e), experts.down_proj(e));
    REQUIRE((y.row(t) - ref).cwiseAbs().maxCoeff() < 1e-12);
  }
  // The layer itself requires one id per row.
  REQUIRE_THROWS_AS(layer.forward(x, ws), std::invalid_argument);
  REQUIRE_THROWS_WITH(layer.forward(x, ws), Catch::Contains("token_ids length (one per row of x)") &&
                                                Catch::Contains("expected 8, got 0"));
}

TEST_CASE("hash router traits: needs token ids, no rng", "[router][hash]") {
  STATIC_REQUIRE(moe::router_traits<moe::HashRouter<float>>::needs_token_ids);
  STATIC_REQUIRE(moe::router_traits<moe::HashRouter<float>>::token_choice);
  STATIC_REQUIRE_FALSE(moe::router_traits<moe::HashRouter<float>>::needs_rng);
  STATIC_REQUIRE(moe::Router<moe::HashRouter<double>>);
}

TEST_CASE("hash router errors name the id and the vocabulary size", "[router][hash]") {
  using R = moe::HashRouter<float>;
  REQUIRE_THROWS_WITH(R({0, 4, 1}, 4, 2), "HashRouter::HashRouter(): table[1] (an expert index) expected in [0, 4), got 4");
  REQUIRE_THROWS_WITH(R({0, -1}, 4, 2), "HashRouter::HashRouter(): table[1] (an expert index) expected in [0, 4), got -1");
  REQUIRE_THROWS_WITH(R({}, 4, 2), "HashRouter::HashRouter(): table length (vocabulary size) expected >= 1, got 0");
  REQUIRE_THROWS_WITH(R({0}, 0, 2), "HashRouter::HashRouter(): num_experts expected >= 1, got 0");
  REQUIRE_THROWS_WITH(R({0}, 1, 0), "HashRouter::HashRouter(): input_dim expected >= 1, got 0");
  REQUIRE_THROWS_WITH(R::balanced(0, 4, 2, 1), "HashRouter::balanced(): vocab_size expected >= 1, got 0");
  REQUIRE_THROWS_WITH(R::stateless(0, 2), "HashRouter::stateless(): num_experts expected >= 1, got 0");

  R router({0, 1, 2, 3, 0}, 4, 2);
  moe::RoutingResult<float> out;
  const RowMatrix<float> x = RowMatrix<float>::Zero(3, 2);
  REQUIRE_THROWS_WITH(router.route(x, out, with_ids({0, 5, 1})),
                      "HashRouter::route(): token_ids[1] expected in [0, vocab_size = 5), got 5");
  REQUIRE_THROWS_WITH(router.route(x, out, with_ids({0, 1, -3})),
                      "HashRouter::route(): token_ids[2] expected in [0, vocab_size = 5), got -3");
  REQUIRE_THROWS_WITH(router.route(x, out, with_ids({0, 1})),
                      "HashRouter::route(): token_ids length (one per row of x) expected 3, got 2");
  REQUIRE_THROWS_WITH(router.route(RowMatrix<float>::Zero(3, 4), out, with_ids({0, 1, 2})),
                      "HashRouter::route(): x columns (input_dim) expected 2, got 4");
  REQUIRE_THROWS_WITH(router.expert_of(9), "HashRouter::expert_of(): token id expected in [0, vocab_size = 5), got 9");
  const auto hashed = R::stateless(4, 2);
  REQUIRE_THROWS_WITH(hashed.route(x, out, with_ids({0, -1, 2})),
                      "HashRouter::route(): token_ids[1] expected >= 0, got -1");
}
