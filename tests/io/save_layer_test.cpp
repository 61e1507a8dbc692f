// save_layer writes every family under exactly the names its loader reads: a hand-built layer
// with random weights, saved and loaded back by the family's loader, has equal parameters and
// a bit-identical forward. The expected name lists are written out from the loaders' documented
// layouts (docs/loaders.md), not taken from the writer.
#include <moe/io/save_layer.hpp>

#include "support/random.hpp"

#include <catch2/catch.hpp>
#include <support/bits.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

using Catch::Contains;
using moe::Index;
using moe::RowMatrix;
using moe::io::Family;
using moe::io::SafetensorsFile;
using moe::io::SafetensorsWriter;

constexpr Index E = 4, D = 6, FF = 5, T = 11;

template <class S>
RowMatrix<S> random(Index rows, Index cols, unsigned seed) {
  RowMatrix<S> m(rows, cols);
  moe::test::fill(m, seed, 0.5);
  return m;
}

template <class S>
moe::Vector<S> random_vector(Index n, unsigned seed) {
  moe::Vector<S> v(n);
  moe::test::fill(v, seed, 0.5);
  return v;
}

template <class S, moe::Activation Act>
moe::FFNExperts<S, Act> ffn(unsigned seed) {
  moe::FFNExperts<S, Act> bank(E, D, FF);
  moe::test::fill(bank.wi(), seed, 0.3);
  moe::test::fill(bank.wo(), seed + 1, 0.3);
  return bank;
}

SafetensorsFile reopen(const SafetensorsWriter& w) { return SafetensorsFile::from_bytes(w.to_bytes(), "saved.safetensors"); }

/// Every parameter's values in for_each_parameter order (router, experts, combiner). Names are
/// left out: a hand-built layer keeps its default names, a loaded one the file's.
template <class Layer>
std::vector<std::vector<typename Layer::scalar_type>> parameter_values(const Layer& layer) {
  std::vector<std::vector<typename Layer::scalar_type>> out;
  layer.for_each_parameter([&](const std::string&, const auto& block) {
    auto& v = out.emplace_back();
    for (Index r = 0; r < block.rows(); ++r)
      for (Index c = 0; c < block.cols(); ++c) v.push_back(block(r, c));
  });
  return out;
}

/// Parameters equal and forward outputs bit-identical, in inference and in training mode.
template <class Layer>
void require_same_layer(const Layer& original, const Layer& loaded, moe::ForwardContext ctx = {}) {
  using S = typename Layer::scalar_type;
  REQUIRE(loaded.num_experts() == original.num_experts());
  REQUIRE(loaded.input_dim() == original.input_dim());
  REQUIRE(parameter_values(loaded) == parameter_values(original));
  const RowMatrix<S> x = random<S>(T, original.input_dim(), 99);
  for (const moe::Mode mode : {moe::Mode::inference, moe::Mode::training}) {
    ctx.mode = mode;
    ctx.seed = 7;
    typename Layer::workspace_type ws_a, ws_b;
    const RowMatrix<S> ya = original.forward(x, ws_a, ctx);
    const RowMatrix<S> yb = loaded.forward(x, ws_b, ctx);
    REQUIRE(ya.allFinite());
    REQUIRE(moe::test::same_bits(ya, yb));
  }
}

std::set<std::string> names_of(const SafetensorsFile& f) {
  const auto n = f.names();
  return {n.begin(), n.end()};
}

/// {p}{experts}{e}.{a|b|c} for every expert.
std::set<std::string> expert_names(const std::string& p, const std::vector<std::string>& per_expert, Index n = E) {
  std::set<std::string> out;
  for (Index e = 0; e < n; ++e)
    for (const auto& s : per_expert) out.insert(p + std::to_string(e) + "." + s);
  return out;
}

std::set<std::string> operator+(std::set<std::string> a, const std::set<std::string>& b) {
  a.insert(b.begin(), b.end());
  return a;
}

}  // namespace

TEMPLATE_TEST_CASE("Mixtral and OLMoE (one C++ type) save under the layout the family argument names",
                   "[io][save]", float, double) {
  using S = TestType;
  const moe::MixtralMoE<S> mixtral(moe::test::swiglu<S>(E, D, FF, 1),
                                   moe::SoftmaxTopKRouter<S>(random<S>(E, D, 3), 2, moe::SoftmaxTopK<S>{true}));
  SafetensorsWriter w;
  moe::io::save_layer(w, mixtral, "model.layers.3.block_sparse_moe.", Family::mixtral);
  const auto f = reopen(w);
  REQUIRE(names_of(f) == std::set<std::string>{"model.layers.3.block_sparse_moe.gate.weight"} +
                             expert_names("model.layers.3.block_sparse_moe.experts.", {"w1.weight", "w3.weight", "w2.weight"}));
  require_same_layer(mixtral, moe::io::load_mixtral<S>(f, "model.layers.3.block_sparse_moe.", {2}));

  const moe::OlmoeMoE<S> olmoe(moe::test::swiglu<S>(E, D, FF, 5),
                               moe::SoftmaxTopKRouter<S>(random<S>(E, D, 7), 3, moe::SoftmaxTopK<S>{false}));
  SafetensorsWriter w2;
  moe::io::save_layer(w2, olmoe, "mlp.", Family::olmoe);
  const auto f2 = reopen(w2);
  REQUIRE(names_of(f2) == std::set<std::string>{"mlp.gate.weight"} +
                              expert_names("mlp.experts.", {"gate_proj.weight", "up_proj.weight", "down_proj.weight"}));
  require_same_layer(olmoe, moe::io::load_olmoe<S>(f2, "mlp.", {3, false}));
}

TEST_CASE("save_mixtral refuses what load_mixtral cannot give back", "[io][save][errors]") {
  const moe::MixtralMoE<float> unnormalised(moe::test::swiglu<float>(E, D, FF, 1),
                                            moe::SoftmaxTopKRouter<float>(random<float>(E, D, 3), 2, moe::SoftmaxTopK<float>{false}));
  SafetensorsWriter w;
  REQUIRE_THROWS_WITH(moe::io::save_layer(w, unnormalised, "m.", Family::mixtral),
                      "moe::io::save_mixtral(): router renormalize expected true (load_mixtral always renormalises; "
                      "save as Family::olmoe to keep false), got false");
  REQUIRE_THROWS_WITH(moe::io::save_layer(w, unnormalised, "m.", Family::qwen2_moe),
                      "moe::io::save_layer(): family for a MixtralMoE / OlmoeMoE expected mixtral or olmoe, got qwen2_moe");
  moe::MixtralMoE<float> biased(moe::test::swiglu<float>(E, D, FF, 1),
                                moe::SoftmaxTopKRouter<float>(random<float>(E, D, 3), 2, moe::SoftmaxTopK<float>{true},
                                                              random_vector<float>(E, 4)));
  REQUIRE_THROWS_WITH(moe::io::save_layer(w, biased, "m.", Family::olmoe),
                      "moe::io::save_olmoe(): router bias expected none (the loader reads no router bias), got a bias "
                      "of length 4");
  REQUIRE(w.to_bytes().size() == 16);  // refused before writing anything: 8-byte length + "{}" padded to 8
}

TEMPLATE_TEST_CASE("Qwen2-MoE round-trips with its gated shared expert", "[io][save]", float, double) {
  using S = TestType;
  moe::SharedExpertCombiner<moe::SwiGLUExperts<S>, moe::SharedGate::sigmoid> shared(moe::test::swiglu<S>(1, D, 7, 11));
  moe::test::fill(shared.gate_weight(), 13, 0.5);
  const moe::Qwen2MoE<S> layer(moe::test::swiglu<S>(E, D, FF, 1),
                               moe::SoftmaxTopKRouter<S>(random<S>(E, D, 3), 2, moe::SoftmaxTopK<S>{false}),
                               std::move(shared));
  SafetensorsWriter w;
  moe::io::save_layer(w, layer, "mlp.");
  const auto f = reopen(w);
  REQUIRE(names_of(f) == std::set<std::string>{"mlp.gate.weight", "mlp.shared_expert.gate_proj.weight",
                                               "mlp.shared_expert.up_proj.weight", "mlp.shared_expert.down_proj.weight",
                                               "mlp.shared_expert_gate.weight"} +
                             expert_names("mlp.experts.", {"gate_proj.weight", "up_proj.weight", "down_proj.weight"}));
  REQUIRE(f.info("mlp.shared_expert_gate.weight").shape == std::vector<std::int64_t>{1, D});
  const auto loaded = moe::io::load_qwen2_moe<S>(f, "mlp.", {2, false});
  require_same_layer(layer, loaded);
  REQUIRE(loaded.combiner().gate_weight() == layer.combiner().gate_weight());
}

TEMPLATE_TEST_CASE("DeepSeek-V3 round-trips with its correction bias and ungated shared experts", "[io][save]", float,
                   double) {
  using S = TestType;
  moe::SigmoidGroupLimited<S> gating;
  gating.n_group = 2;
  gating.topk_group = 1;
  gating.routed_scaling_factor = S(2.5);
  gating.renormalize = true;
  gating.correction_bias = random_vector<S>(E, 17);
  const moe::DeepSeekV3MoE<S> layer(
      moe::test::swiglu<S>(E, D, FF, 1), moe::GroupLimitedRouter<S>(random<S>(E, D, 3), 2, gating),
      moe::SharedExpertCombiner<moe::SwiGLUExperts<S>, moe::SharedGate::none>(moe::test::swiglu<S>(1, D, 3, 19)));
  SafetensorsWriter w;
  moe::io::save_layer(w, layer, "model.layers.5.mlp.");
  const auto f = reopen(w);
  const std::string p = "model.layers.5.mlp.";
  REQUIRE(names_of(f) == std::set<std::string>{p + "gate.weight", p + "gate.e_score_correction_bias",
                                               p + "shared_experts.gate_proj.weight", p + "shared_experts.up_proj.weight",
                                               p + "shared_experts.down_proj.weight"} +
                             expert_names(p + "experts.", {"gate_proj.weight", "up_proj.weight", "down_proj.weight"}));
  moe::io::DeepSeekV3Config c;
  c.top_k = 2;
  c.n_group = 2;
  c.topk_group = 1;
  c.routed_scaling_factor = 2.5;
  const auto loaded = moe::io::load_deepseek_v3<S>(f, p, c);
  require_same_layer(layer, loaded);
  REQUIRE(loaded.router().gating().correction_bias == gating.correction_bias);
}

TEMPLATE_TEST_CASE("GPT-OSS round-trips its fused experts and router bias", "[io][save]", float, double) {
  using S = TestType;
  moe::GptOssExperts<S> experts(E, D, FF, S(1.702), S(7));
  moe::test::fill(experts.gate_up(), 1, 0.3);
  moe::test::fill(experts.gate_up_bias(), 2, 0.3);
  moe::test::fill(experts.down(), 3, 0.3);
  moe::test::fill(experts.down_bias(), 4, 0.3);
  const std::set<std::string> names{"mlp.router.weight",         "mlp.router.bias",   "mlp.experts.gate_up_proj",
                                    "mlp.experts.gate_up_proj_bias", "mlp.experts.down_proj", "mlp.experts.down_proj_bias"};
  SECTION("with a router bias") {
    const moe::GptOssMoE<S> layer(experts, moe::TopKSoftmaxRouter<S>(random<S>(E, D, 5), 2, {}, random_vector<S>(E, 6)));
    SafetensorsWriter w;
    moe::io::save_layer(w, layer, "mlp.");
    const auto f = reopen(w);
    REQUIRE(names_of(f) == names);
    REQUIRE(f.info("mlp.experts.gate_up_proj").shape == std::vector<std::int64_t>{E, D, 2 * FF});
    REQUIRE(f.info("mlp.experts.down_proj").shape == std::vector<std::int64_t>{E, FF, D});
    require_same_layer(layer, moe::io::load_gpt_oss<S>(f, "mlp.", {2}));
  }
  SECTION("without one: saved as zeros, which change no logit") {
    const moe::GptOssMoE<S> layer(experts, moe::TopKSoftmaxRouter<S>(random<S>(E, D, 5), 2));
    SafetensorsWriter w;
    moe::io::save_layer(w, layer, "mlp.");
    const auto f = reopen(w);
    REQUIRE(f.read<S>("mlp.router.bias") == std::vector<S>(E, S(0)));
    const auto loaded = moe::io::load_gpt_oss<S>(f, "mlp.", {2});
    REQUIRE(loaded.experts().gate_up() == layer.experts().gate_up());
    REQUIRE(loaded.router().weight() == layer.router().weight());
    const RowMatrix<S> x = random<S>(T, D, 99);
    typename moe::GptOssMoE<S>::workspace_type ws_a, ws_b;
    REQUIRE(moe::test::same_bits(layer.forward(x, ws_a), loaded.forward(x, ws_b)));
  }
}

TEMPLATE_TEST_CASE("Switch round-trips, the capacity going back through SwitchConfig", "[io][save]", float, double) {
  using S = TestType;
  const moe::SwitchMoE<S> layer(ffn<S, moe::Activation::relu>(1),
                                moe::SoftmaxTopKRouter<S>(random<S>(E, D, 3), 1, moe::SoftmaxTopK<S>{false}),
                                moe::WeightedSumCombiner<S>{}, moe::Capacity::fixed(3));
  SafetensorsWriter w;
  moe::io::save_layer(w, layer, "encoder.block.1.layer.1.mlp.");
  const auto f = reopen(w);
  const std::string p = "encoder.block.1.layer.1.mlp.";
  REQUIRE(names_of(f) == std::set<std::string>{p + "router.classifier.weight"} +
                             expert_names(p + "experts.expert_", {"wi.weight", "wo.weight"}));
  require_same_layer(layer, moe::io::load_switch_transformers<S>(f, p, {moe::Capacity::fixed(3)}));
}

TEST_CASE("save_switch_transformers refuses settings and biases its loader cannot give back", "[io][save][errors]") {
  SafetensorsWriter w;
  const moe::SwitchMoE<float> top2(ffn<float, moe::Activation::relu>(1),
                                   moe::SoftmaxTopKRouter<float>(random<float>(E, D, 3), 2, moe::SoftmaxTopK<float>{false}));
  REQUIRE_THROWS_WITH(moe::io::save_layer(w, top2, "mlp."),
                      "moe::io::save_switch_transformers(): router k expected 1 (Switch routes top-1), got 2");
  const moe::SwitchMoE<float> renormalised(ffn<float, moe::Activation::relu>(1),
                                           moe::SoftmaxTopKRouter<float>(random<float>(E, D, 3), 1, moe::SoftmaxTopK<float>{true}));
  REQUIRE_THROWS_WITH(moe::io::save_layer(w, renormalised, "mlp."),
                      Contains("router renormalize expected false (Switch's gate is the top-1 probability), got true"));
  moe::SwitchMoE<float> biased(ffn<float, moe::Activation::relu>(1),
                               moe::SoftmaxTopKRouter<float>(random<float>(E, D, 3), 1, moe::SoftmaxTopK<float>{false}));
  biased.experts().bi().setOnes(E, FF);
  biased.experts().bo().setOnes(E, D);
  REQUIRE(biased.experts().has_biases());
  REQUIRE_THROWS_WITH(moe::io::save_layer(w, biased, "mlp."),
                      "moe::io::save_switch_transformers(): experts expected without biases (the loader reads wi and "
                      "wo only), got a bank with biases");
  REQUIRE_THROWS_WITH(moe::io::save_layer(w, top2, "mlp.", Family::soft_moe),
                      "moe::io::save_layer(): family for a SwitchMoE expected switch_transformers, got soft_moe");
}

TEMPLATE_TEST_CASE("noisy top-k, expert choice and hash routing round-trip in the own-reference layout (prefix moe.)", "[io][save]", float,
                   double) {
  using S = TestType;
  const std::set<std::string> experts = expert_names("moe.experts.", {"w1.weight", "w3.weight", "w2.weight"});
  SECTION("noisy top-k") {
    const moe::NoisyTopKMoE<S> layer(moe::test::swiglu<S>(E, D, FF, 1),
                                     moe::NoisyTopKRouter<S>(random<S>(E, D, 3), random<S>(E, D, 4), 2, S(1e-2)));
    SafetensorsWriter w;
    moe::io::save_layer(w, layer, "moe.");
    const auto f = reopen(w);
    REQUIRE(names_of(f) == std::set<std::string>{"moe.gate.weight", "moe.noise.weight"} + experts);
    require_same_layer(layer, moe::io::load_noisy_top_k<S>(f, "moe.", {2, 1e-2}));  // training mode draws noise
  }
  SECTION("expert choice") {
    const moe::ExpertChoiceMoE<S> layer(moe::test::swiglu<S>(E, D, FF, 1), moe::ExpertChoiceRouter<S>(random<S>(E, D, 3), 2.0));
    SafetensorsWriter w;
    moe::io::save_layer(w, layer, "moe.");
    const auto f = reopen(w);
    REQUIRE(names_of(f) == std::set<std::string>{"moe.gate.weight"} + experts);
    require_same_layer(layer, moe::io::load_expert_choice<S>(f, "moe.", {2.0}));
  }
  SECTION("hash") {
    const moe::HashMoE<S> layer(moe::test::swiglu<S>(E, D, FF, 1), moe::HashRouter<S>::balanced(16, E, D, 5));
    SafetensorsWriter w;
    moe::io::save_layer(w, layer, "moe.");
    const auto f = reopen(w);
    REQUIRE(names_of(f) == std::set<std::string>{"moe.hash_table"} + experts);
    REQUIRE(f.info("moe.hash_table").dtype == moe::io::DType::I64);
    const auto loaded = moe::io::load_hash<S>(f, "moe.");
    REQUIRE(loaded.router().table() == layer.router().table());
    std::vector<std::int64_t> ids(T);
    for (Index t = 0; t < T; ++t) ids[static_cast<std::size_t>(t)] = (t * 5) % 16;
    moe::ForwardContext ctx;
    ctx.token_ids = ids;
    require_same_layer(layer, loaded, ctx);
  }
}

TEST_CASE("a stateless hash router has no table to save", "[io][save][errors]") {
  const moe::HashMoE<float> layer(moe::test::swiglu<float>(E, D, FF, 1), moe::HashRouter<float>::stateless(E, D, 5));
  SafetensorsWriter w;
  REQUIRE_THROWS_WITH(moe::io::save_layer(w, layer, "moe."),
                      "moe::io::save_hash(): router expected one with a table, got a stateless router "
                      "(HashRouter::stateless)");
}

TEMPLATE_TEST_CASE("Soft MoE round-trips, slots, normalisation and scale going back through SoftMoeConfig", "[io][save]",
                   float, double) {
  using S = TestType;
  constexpr Index slots = 2;
  moe::SoftRouter<S> router(random<S>(D, E * slots, 3), slots, true);
  router.scale() = S(0.75);
  const moe::SoftMoE<S> layer(ffn<S, moe::Activation::gelu_erf>(1), std::move(router));
  SafetensorsWriter w;
  moe::io::save_layer(w, layer, "soft_moe.");
  const auto f = reopen(w);
  REQUIRE(names_of(f) == std::set<std::string>{"soft_moe.phi"} + expert_names("soft_moe.experts.", {"wi.weight", "wo.weight"}));
  REQUIRE(f.info("soft_moe.phi").shape == std::vector<std::int64_t>{D, E * slots});
  moe::ForwardContext ctx;
  ctx.sequence_length = 0;
  require_same_layer(layer, moe::io::load_soft_moe<S>(f, "soft_moe.", {slots, true, 0.75}), ctx);
}

TEST_CASE("a saved file round-trips through the file system", "[io][save]") {
  const moe::MixtralMoE<double> layer(moe::test::swiglu<double>(E, D, FF, 1),
                                      moe::SoftmaxTopKRouter<double>(random<double>(E, D, 3), 2, moe::SoftmaxTopK<double>{true}));
  SafetensorsWriter w;
  moe::io::save_layer(w, layer, "block_sparse_moe.", Family::mixtral);
  const auto path = std::filesystem::temp_directory_path() / "moe_save_layer_test.safetensors";
  w.save(path);
  const auto f = SafetensorsFile::open(path);
  std::filesystem::remove(path);
  REQUIRE(f.info("block_sparse_moe.gate.weight").dtype == moe::io::DType::F64);
  require_same_layer(layer, moe::io::load_mixtral<double>(f, "block_sparse_moe.", {2}));
}

namespace {

// One expert of modality 0, one of modality 1, two cross-modal; a third modality has no expert
// of its own (only the cross-modal ones), which the table cannot show: M = 3 goes back through
// ModalityConfig.
const std::vector<Index> saved_modality_table{0, moe::cross_modal, 1, moe::cross_modal};
constexpr Index saved_num_modalities = 3, saved_num_domains = 3;

template <class S>
moe::ModalityMoE<S> modality_layer(bool renormalize, moe::Vector<S> bias = {}) {
  return moe::ModalityMoE<S>(
      moe::test::swiglu<S>(E, D, FF, 1),
      moe::ModalitySoftmaxTopKRouter<S>(
          moe::SoftmaxTopKRouter<S>(random<S>(E, D, 3), 2, moe::SoftmaxTopK<S>{renormalize}, std::move(bias)),
          saved_modality_table, saved_num_modalities));
}

template <class S>
moe::DomainAwareMoE<S> domain_layer(bool renormalize, moe::Vector<S> bias = {}) {
  return moe::DomainAwareMoE<S>(
      moe::test::swiglu<S>(E, D, FF, 1),
      moe::DomainAwareSoftmaxTopKRouter<S>(
          moe::SoftmaxTopKRouter<S>(random<S>(E, D, 3), 2, moe::SoftmaxTopK<S>{renormalize}, std::move(bias)),
          random<S>(saved_num_domains, D, 4), random<S>(saved_num_domains, E, 5)));
}

}  // namespace

TEMPLATE_TEST_CASE("modality experts and domain-aware routing round-trip in the own-reference layout (prefix moe.)",
                   "[io][save]", float, double) {
  using S = TestType;
  const std::set<std::string> experts = expert_names("moe.experts.", {"w1.weight", "w3.weight", "w2.weight"});
  SECTION("modality experts") {
    const moe::ModalityMoE<S> layer = modality_layer<S>(false);
    SafetensorsWriter w;
    moe::io::save_layer(w, layer, "moe.");
    const auto f = reopen(w);
    REQUIRE(names_of(f) == std::set<std::string>{"moe.gate.weight", "moe.expert_modality"} + experts);
    REQUIRE(f.info("moe.gate.weight").shape == std::vector<std::int64_t>{E, D});
    REQUIRE(f.info("moe.expert_modality").dtype == moe::io::DType::I64);
    REQUIRE(f.info("moe.expert_modality").shape == std::vector<std::int64_t>{E});
    REQUIRE(f.read<std::int64_t>("moe.expert_modality") == std::vector<std::int64_t>{0, -1, 1, -1});
    const auto loaded = moe::io::load_modality_experts<S>(f, "moe.", {2, false, saved_num_modalities});
    REQUIRE(loaded.router().expert_modality() == saved_modality_table);
    REQUIRE(loaded.router().num_modalities() == saved_num_modalities);
    REQUIRE(loaded.router().k() == 2);
    REQUIRE_FALSE(loaded.router().gating().renormalize);
    // Every modality in the batch, the third (cross-modal experts only) included.
    std::vector<std::int64_t> ids(T);
    for (Index t = 0; t < T; ++t) ids[static_cast<std::size_t>(t)] = (t * 2) % saved_num_modalities;
    moe::ForwardContext ctx;
    ctx.modality_ids = ids;
    require_same_layer(layer, loaded, ctx);
  }
  SECTION("domain-aware") {
    const moe::DomainAwareMoE<S> layer = domain_layer<S>(true);
    SafetensorsWriter w;
    moe::io::save_layer(w, layer, "moe.");
    const auto f = reopen(w);
    REQUIRE(names_of(f) == std::set<std::string>{"moe.gate.weight", "moe.domain_classifier.weight",
                                                 "moe.domain_affinity"} +
                               experts);
    REQUIRE(f.info("moe.domain_classifier.weight").shape == std::vector<std::int64_t>{saved_num_domains, D});
    REQUIRE(f.info("moe.domain_affinity").shape == std::vector<std::int64_t>{saved_num_domains, E});
    const auto loaded = moe::io::load_domain_aware<S>(f, "moe.", {2, true});
    REQUIRE(loaded.router().num_domains() == saved_num_domains);
    REQUIRE(loaded.router().classifier() == layer.router().classifier());
    REQUIRE(loaded.router().affinity() == layer.router().affinity());
    REQUIRE(loaded.router().gating().renormalize);
    require_same_layer(layer, loaded);
  }
}

TEST_CASE("modality and domain-aware layers save under their own family only, and without a router bias",
          "[io][save][errors]") {
  SafetensorsWriter w;
  const auto modality = modality_layer<float>(true);
  const auto domain = domain_layer<float>(true);
  REQUIRE_THROWS_AS(moe::io::save_layer(w, modality, "moe.", Family::domain_aware), std::invalid_argument);
  REQUIRE_THROWS_WITH(moe::io::save_layer(w, modality, "moe.", Family::domain_aware),
                      "moe::io::save_layer(): family for a ModalityMoE expected modality_experts, got domain_aware");
  REQUIRE_THROWS_WITH(moe::io::save_layer(w, modality, "moe.", Family::hash),
                      "moe::io::save_layer(): family for a ModalityMoE expected modality_experts, got hash");
  REQUIRE_THROWS_AS(moe::io::save_layer(w, domain, "moe.", Family::modality_experts), std::invalid_argument);
  REQUIRE_THROWS_WITH(moe::io::save_layer(w, domain, "moe.", Family::modality_experts),
                      "moe::io::save_layer(): family for a DomainAwareMoE expected domain_aware, got modality_experts");
  REQUIRE_THROWS_WITH(moe::io::save_layer(w, domain, "moe.", Family::expert_choice),
                      "moe::io::save_layer(): family for a DomainAwareMoE expected domain_aware, got expert_choice");
  // Their loaders read no router bias: a wrapped router with one is refused, not saved without it.
  REQUIRE_THROWS_WITH(moe::io::save_layer(w, modality_layer<float>(true, random_vector<float>(E, 6)), "moe."),
                      "moe::io::save_modality_experts(): router bias expected none (the loader reads no router bias), "
                      "got a bias of length 4");
  REQUIRE_THROWS_WITH(moe::io::save_layer(w, domain_layer<float>(true, random_vector<float>(E, 6)), "moe."),
                      "moe::io::save_domain_aware(): router bias expected none (the loader reads no router bias), got "
                      "a bias of length 4");
  REQUIRE(w.to_bytes().size() == 16);  // refused before writing anything: 8-byte length + "{}" padded to 8
}

namespace {

constexpr Index saved_num_tasks = 3;

template <class S>
moe::TaskAwareMoE<S> task_layer(bool renormalize, moe::Vector<S> bias = {}) {
  std::vector<RowMatrix<S>> gates;
  for (Index j = 0; j < saved_num_tasks; ++j) gates.push_back(random<S>(E, D, 40 + static_cast<unsigned>(j)));
  return moe::TaskAwareMoE<S>(
      moe::test::swiglu<S>(E, D, FF, 1),
      moe::TaskAwareSoftmaxTopKRouter<S>(
          moe::SoftmaxTopKRouter<S>(random<S>(E, D, 3), 2, moe::SoftmaxTopK<S>{renormalize}, std::move(bias)),
          std::move(gates), random_vector<S>(saved_num_tasks, 45)));
}

}  // namespace

TEMPLATE_TEST_CASE("task-aware routing round-trips in the own-reference layout (prefix moe.)", "[io][save][task]",
                   float, double) {
  using S = TestType;
  const std::set<std::string> experts = expert_names("moe.experts.", {"w1.weight", "w3.weight", "w2.weight"});
  const moe::TaskAwareMoE<S> layer = task_layer<S>(false);
  SafetensorsWriter w;
  moe::io::save_layer(w, layer, "moe.");
  const auto f = reopen(w);
  REQUIRE(names_of(f) == std::set<std::string>{"moe.gate.weight", "moe.task_gates.0.weight", "moe.task_gates.1.weight",
                                               "moe.task_gates.2.weight", "moe.task_sensitivity"} +
                             experts);
  for (const char* name : {"moe.gate.weight", "moe.task_gates.0.weight", "moe.task_gates.2.weight"})
    REQUIRE(f.info(name).shape == std::vector<std::int64_t>{E, D});
  REQUIRE(f.info("moe.task_sensitivity").shape == std::vector<std::int64_t>{saved_num_tasks});
  const auto loaded = moe::io::load_task_aware<S>(f, "moe.", {2, false});
  REQUIRE(loaded.router().num_tasks() == saved_num_tasks);
  for (Index j = 0; j < saved_num_tasks; ++j) REQUIRE(loaded.router().task_gate(j) == layer.router().task_gate(j));
  REQUIRE(loaded.router().sensitivity() == layer.router().sensitivity());
  REQUIRE(loaded.router().k() == 2);
  REQUIRE_FALSE(loaded.router().gating().renormalize);
  // Every task in the batch.
  std::vector<std::int64_t> ids(T);
  for (Index t = 0; t < T; ++t) ids[static_cast<std::size_t>(t)] = (t * 2) % saved_num_tasks;
  moe::ForwardContext ctx;
  ctx.task_ids = ids;
  require_same_layer(layer, loaded, ctx);
}

TEST_CASE("a task-aware layer saves under its own family only, and without a router bias", "[io][save][errors][task]") {
  SafetensorsWriter w;
  const auto task = task_layer<float>(true);
  REQUIRE_THROWS_AS(moe::io::save_layer(w, task, "moe.", Family::domain_aware), std::invalid_argument);
  REQUIRE_THROWS_WITH(moe::io::save_layer(w, task, "moe.", Family::domain_aware),
                      "moe::io::save_layer(): family for a TaskAwareMoE expected task_aware, got domain_aware");
  REQUIRE_THROWS_WITH(moe::io::save_layer(w, domain_layer<float>(true), "moe.", Family::task_aware),
                      "moe::io::save_layer(): family for a DomainAwareMoE expected domain_aware, got task_aware");
  REQUIRE_THROWS_WITH(moe::io::save_layer(w, task_layer<float>(true, random_vector<float>(E, 6)), "moe."),
                      "moe::io::save_task_aware(): router bias expected none (the loader reads no router bias), got "
                      "a bias of length 4");
  REQUIRE(w.to_bytes().size() == 16);  // refused before writing anything
}

TEMPLATE_TEST_CASE("top-p and threshold-skip routing round-trip in the own-reference layout (prefix moe.)",
                   "[io][save][top_p][threshold_skip]", float, double) {
  using S = TestType;
  const std::set<std::string> experts = expert_names("moe.experts.", {"w1.weight", "w3.weight", "w2.weight"});
  SECTION("top-p") {
    const moe::TopPMoE<S> layer(moe::test::swiglu<S>(E, D, FF, 1),
                                moe::TopPRouter<S>(random<S>(E, D, 3), 3, moe::TopP<S>{S(0.6)}));
    SafetensorsWriter w;
    moe::io::save_layer(w, layer, "moe.");
    const auto f = reopen(w);
    REQUIRE(names_of(f) == std::set<std::string>{"moe.gate.weight"} + experts);
    const auto loaded = moe::io::load_top_p<S>(f, "moe.", {0.6, 3});
    CHECK(loaded.router().k() == 3);
    CHECK(loaded.router().gating().threshold == S(0.6));
    require_same_layer(layer, loaded);
  }
  SECTION("threshold skip") {
    const moe::ThresholdSkipMoE<S> layer(moe::test::swiglu<S>(E, D, FF, 1),
                                         moe::ThresholdSkipRouter<S>(random<S>(E, D, 3), 2, moe::ThresholdSkip<S>{S(0.4)}));
    SafetensorsWriter w;
    moe::io::save_layer(w, layer, "moe.", Family::threshold_skip);
    const auto f = reopen(w);
    REQUIRE(names_of(f) == std::set<std::string>{"moe.gate.weight"} + experts);
    const auto loaded = moe::io::load_threshold_skip<S>(f, "moe.", {0.4, 2});
    CHECK(loaded.router().gating().beta == S(0.4));
    require_same_layer(layer, loaded);
  }
}

TEST_CASE("top-p and threshold-skip layers save under their own family only, and without a router bias",
          "[io][save][errors][top_p][threshold_skip]") {
  moe::TopPMoE<float> top_p(moe::test::swiglu<float>(E, D, FF, 1), moe::TopPRouter<float>(random<float>(E, D, 3), 2));
  SafetensorsWriter w;
  REQUIRE_THROWS_WITH(moe::io::save_layer(w, top_p, "moe.", Family::mixtral),
                      "moe::io::save_layer(): family for a TopPMoE expected top_p, got mixtral");
  top_p.router().bias() = moe::Vector<float>::Zero(E);
  REQUIRE_THROWS_WITH(moe::io::save_layer(w, top_p, "moe."), Contains("moe::io::save_top_p(): router bias expected none"));
  const moe::ThresholdSkipMoE<float> skip(moe::test::swiglu<float>(E, D, FF, 1),
                                          moe::ThresholdSkipRouter<float>(random<float>(E, D, 3), 2));
  REQUIRE_THROWS_WITH(moe::io::save_layer(w, skip, "moe.", Family::top_p),
                      "moe::io::save_layer(): family for a ThresholdSkipMoE expected threshold_skip, got top_p");
}

TEMPLATE_TEST_CASE("hierarchical routing round-trips its primary and group routers", "[io][save][hierarchical]", float,
                   double) {
  using S = TestType;
  // E = 4 experts as 2 groups of 2.
  const moe::HierarchicalMoE<S> layer(moe::test::swiglu<S>(E, D, FF, 1),
                                      moe::HierarchicalRouter<S>(random<S>(2, D, 3), random<S>(E, D, 4), 2, 1));
  SafetensorsWriter w;
  moe::io::save_layer(w, layer, "moe.");
  const auto f = reopen(w);
  const std::set<std::string> experts = expert_names("moe.experts.", {"w1.weight", "w3.weight", "w2.weight"});
  REQUIRE(names_of(f) == std::set<std::string>{"moe.gate.weight", "moe.group_gates.0.weight", "moe.group_gates.1.weight"} +
                             experts);
  const auto loaded = moe::io::load_hierarchical<S>(f, "moe.", {2, 1, true});
  CHECK(loaded.router().num_groups() == 2);
  CHECK(loaded.router().experts_per_group() == 2);
  require_same_layer(layer, loaded);
  SafetensorsWriter w2;
  REQUIRE_THROWS_WITH(moe::io::save_layer(w2, layer, "moe.", Family::mixtral),
                      "moe::io::save_layer(): family for a HierarchicalMoE expected hierarchical, got mixtral");
}

TEMPLATE_TEST_CASE("low-rank experts round-trip with their base, frozen or trained", "[io][save][low_rank]", float,
                   double) {
  using S = TestType;
  moe::LowRankExperts<S> adapters(E, D, 2, S(1.5));
  moe::test::fill(adapters.a(), 1, 0.5);
  moe::test::fill(adapters.b(), 2, 0.5);
  moe::LinearExperts<S> base(1, D, D);
  moe::test::fill(base.weights(), 3, 0.5);
  base.names().weight = "base.weight";  // the loader's name, so the parameter lists compare
  base.set_trainable(true);
  const moe::LowRankMoE<S> layer(std::move(adapters), moe::SoftmaxTopKRouter<S>(random<S>(E, D, 4), 2),
                                 moe::SharedExpertCombiner<moe::LinearExperts<S>, moe::SharedGate::none>(std::move(base)));
  SafetensorsWriter w;
  moe::io::save_layer(w, layer, "moe.");
  const auto f = reopen(w);
  std::set<std::string> want{"moe.gate.weight", "moe.base.weight"};
  for (Index e = 0; e < E; ++e) {
    want.insert("moe.experts." + std::to_string(e) + ".lora_A.weight");
    want.insert("moe.experts." + std::to_string(e) + ".lora_B.weight");
  }
  REQUIRE(names_of(f) == want);
  // scale = alpha / r: alpha 3 for r 2 gives the layer's 1.5.
  const auto loaded = moe::io::load_low_rank<S>(f, "moe.", {2, true, 3.0, true});
  CHECK(loaded.experts().scale() == S(1.5));
  require_same_layer(layer, loaded);
  const auto frozen = moe::io::load_low_rank<S>(f, "moe.", {2, true, 3.0, false});
  CHECK(frozen.combiner().shared_expert().weights() == layer.combiner().shared_expert().weights());
}

TEMPLATE_TEST_CASE("convolutional experts round-trip their kernels and SwiGLU weights", "[io][save][conv]", float,
                   double) {
  using S = TestType;
  moe::CausalConvExperts<moe::SwiGLUExperts<S>> experts(moe::test::swiglu<S>(E, D, FF, 1), 3);
  moe::test::fill(experts.kernels(), 5, 0.5);
  experts.inner().names() = {"experts.{e}.w1.weight", "experts.{e}.w3.weight", "experts.{e}.w2.weight"};
  const moe::ConvMoE<S> layer(std::move(experts), moe::SoftmaxTopKRouter<S>(random<S>(E, D, 4), 2));
  SafetensorsWriter w;
  moe::io::save_layer(w, layer, "moe.");
  const auto f = reopen(w);
  std::set<std::string> want = expert_names("moe.experts.", {"conv.weight", "w1.weight", "w3.weight", "w2.weight"});
  want.insert("moe.gate.weight");
  REQUIRE(names_of(f) == want);
  const auto loaded = moe::io::load_conv_experts<S>(f, "moe.", {2, true});
  CHECK(loaded.experts().kernel_size() == 3);
  CHECK(loaded.experts().kernels() == layer.experts().kernels());
  require_same_layer(layer, loaded);
  SafetensorsWriter w2;
  REQUIRE_THROWS_WITH(moe::io::save_layer(w2, layer, "moe.", Family::low_rank),
                      "moe::io::save_layer(): family for a ConvMoE expected conv_expert, got low_rank");
}
