// The routing loaders (noisy top-k, expert choice, hash routing, modality experts,
// domain-aware, task-aware) on a small file in the "moe." layout: sizes and weights in place, and
// errors that name the loader and the tensor. The modality, domain-aware and task-aware loaders
// also read their golden-variety files here, every weight compared with the file's tensor. Their golden cases:
// tests/conformance/routing_families_test.cpp and tests/conformance/variety_test.cpp.
#include <moe/io/routing_loaders.hpp>

#include <catch2/catch.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "support/golden.hpp"
#include "support/safetensors_file.hpp"

namespace {

using moe::Index;
using moe::test::in_memory;

// A small "moe." layer (E = 3, d = 4, ff = 2) with a gate, a noise weight and a hash table;
// `skip` leaves one tensor out.
moe::io::SafetensorsWriter moe_writer(const std::string& skip = "", std::vector<std::int64_t> table = {0, 2, 1, 1, 0}) {
  moe::io::SafetensorsWriter w;
  const auto put = [&](const std::string& name, std::vector<std::int64_t> shape) {
    if (name == skip) return;
    std::int64_t n = 1;
    for (auto v : shape) n *= v;
    std::vector<float> data(static_cast<size_t>(n));
    for (size_t i = 0; i < data.size(); ++i) data[i] = 0.01f * float(i + 1);
    w.add<float>(name, std::move(shape), std::span<const float>(data));
  };
  put("moe.gate.weight", {3, 4});
  put("moe.noise.weight", {3, 4});
  for (int e = 0; e < 3; ++e) {
    const std::string q = "moe.experts." + std::to_string(e) + ".";
    put(q + "w1.weight", {2, 4});
    put(q + "w3.weight", {2, 4});
    put(q + "w2.weight", {4, 2});
  }
  if (skip != "moe.hash_table")
    w.add<std::int64_t>("moe.hash_table", {std::int64_t(table.size())}, std::span<const std::int64_t>(table));
  return w;
}

}  // namespace

TEST_CASE("the routing loaders read sizes and weights from the moe. layout", "[io][loader][routing]") {
  const auto f = in_memory(moe_writer());
  const auto noisy = moe::io::load_noisy_top_k<double>(f, "moe.", {2});
  REQUIRE(noisy.num_experts() == 3);
  REQUIRE(noisy.router().k() == 2);
  REQUIRE(noisy.router().noise_weight()(2, 3) == Approx(0.12f));
  REQUIRE(noisy.router().noise_epsilon() == Approx(1e-2));
  REQUIRE(noisy.experts().down_proj(1)(3, 1) == Approx(0.08f));
  const auto ec = moe::io::load_expert_choice<float>(f, "moe.", {1.5});
  REQUIRE(ec.router().capacity_factor() == 1.5);
  REQUIRE(ec.router().weight()(0, 1) == 0.02f);
  const auto hash = moe::io::load_hash<float>(f, "moe.");
  REQUIRE(hash.num_experts() == 3);
  REQUIRE(hash.input_dim() == 4);
  REQUIRE(hash.router().table() == std::vector<Index>{0, 2, 1, 1, 0});
}

TEST_CASE("the routing loaders name the loader, the tensor and what was expected", "[io][loader][routing][errors]") {
  REQUIRE_THROWS_AS(moe::io::load_noisy_top_k<float>(in_memory(moe_writer("moe.noise.weight"))),
                    moe::io::MissingTensorError);
  REQUIRE_THROWS_WITH(moe::io::load_noisy_top_k<float>(in_memory(moe_writer("moe.noise.weight"))),
                      "moe::io: file 'layer.safetensors': tensor 'moe.noise.weight': moe::io::load_noisy_top_k(): "
                      "expected this tensor (prefix 'moe.'), but the file has no such name; close names: "
                      "'moe.gate.weight'");  // 4 edits, within max(2, 16 / 4)
  REQUIRE_THROWS_WITH(moe::io::load_noisy_top_k<float>(in_memory(moe_writer()), "moe.", {4}),
                      "moe::io::load_noisy_top_k(): NoisyTopKRouter::NoisyTopKRouter(): k expected in [1, "
                      "num_experts = 3], got 4");
  REQUIRE_THROWS_WITH(moe::io::load_expert_choice<float>(in_memory(moe_writer()), "moe.", {0.0}),
                      "moe::io::load_expert_choice(): ExpertChoiceRouter::ExpertChoiceRouter(): capacity_factor "
                      "expected finite and > 0, got 0");
  REQUIRE_THROWS_WITH(moe::io::load_expert_choice<float>(in_memory(moe_writer("moe.experts.1.w2.weight"))),
                      Catch::Contains("tensor 'moe.experts.1.w2.weight'"));

  REQUIRE_THROWS_AS(moe::io::load_hash<float>(in_memory(moe_writer("moe.hash_table"))), moe::io::MissingTensorError);
  REQUIRE_THROWS_WITH(moe::io::load_hash<float>(in_memory(moe_writer("moe.hash_table"))),
                      "moe::io: file 'layer.safetensors': tensor 'moe.hash_table': moe::io::load_hash(): expected "
                      "this tensor (prefix 'moe.'), but the file has no such name");  // no name within 3 edits or ending so
  REQUIRE_THROWS_AS(moe::io::load_hash<float>(in_memory(moe_writer("", {0, 3, 1}))), moe::io::TensorMismatchError);
  REQUIRE_THROWS_WITH(moe::io::load_hash<float>(in_memory(moe_writer("", {0, 3, 1}))),
                      "moe::io: file 'layer.safetensors': tensor 'moe.hash_table': moe::io::load_hash(): expected "
                      "entries in [0, 3), got 3 at index 1");
  REQUIRE_THROWS_WITH(moe::io::load_hash<float>(in_memory(moe_writer("moe.experts.0.w1.weight"))),
                      "moe::io: file 'layer.safetensors': tensor 'moe.experts.0.w1.weight': moe::io::load_hash(): "
                      "expected at least one expert under this name (prefix 'moe.'), but the file has none; close "
                      "names: 'moe.experts.0.w2.weight', 'moe.experts.0.w3.weight', 'moe.experts.1.w1.weight'");
  moe::io::SafetensorsWriter w = moe_writer("moe.hash_table");
  const std::vector<float> table = {0.0f, 1.0f};
  w.add<float>("moe.hash_table", {2}, std::span<const float>(table));
  REQUIRE_THROWS_WITH(moe::io::load_hash<float>(in_memory(w)),
                      "moe::io: file 'layer.safetensors': tensor 'moe.hash_table': moe::io::load_hash(): expected an "
                      "integer dtype (I64, I32, I16, I8, U8), got F32");
  moe::io::SafetensorsWriter w2 = moe_writer("moe.hash_table");
  const std::vector<std::int64_t> square = {0, 1, 2, 0};
  w2.add<std::int64_t>("moe.hash_table", {2, 2}, std::span<const std::int64_t>(square));
  REQUIRE_THROWS_WITH(moe::io::load_hash<float>(in_memory(w2)),
                      "moe::io: file 'layer.safetensors': tensor 'moe.hash_table': moe::io::load_hash(): expected a "
                      "non-empty 1-D tensor, got shape [2, 2]");
}

// --- Modality experts and domain-aware routing ------------------------------------------------
// This file shares a unity translation unit with loader_robustness_test.cpp (E, D, FF, Tensor,
// swiglu, file_of there): the helpers below carry a variety_ prefix.

namespace {

using moe::io::SafetensorsFile;

Index variety_meta_index(const SafetensorsFile& f, const std::string& key) {
  return static_cast<Index>(std::stoll(moe::test::meta(f, key)));
}

/// The metadata's table text ("0,0,1,1,2,2,-1,-1").
std::vector<Index> variety_parse_table(const std::string& text) {
  std::vector<Index> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) out.push_back(static_cast<Index>(std::stoll(item)));
  return out;
}

/// The number of entries of `m` that differ from the file's F32 tensor `name` (row-major),
/// after checking the tensor's shape is [rows, cols]. float -> double is exact, so 0 is the
/// only right answer for both layer types.
template <class Block>
std::size_t variety_mismatches(const SafetensorsFile& f, const std::string& name, const Block& m) {
  REQUIRE(f.info(name).dtype == moe::io::DType::F32);
  REQUIRE(f.info(name).shape == std::vector<std::int64_t>{m.rows(), m.cols()});
  const std::vector<float> v = f.read<float>(name);
  std::size_t bad = 0;
  for (Index r = 0; r < m.rows(); ++r)
    for (Index c = 0; c < m.cols(); ++c)
      if (m(r, c) != static_cast<typename Block::Scalar>(v[static_cast<std::size_t>(r * m.cols() + c)])) ++bad;
  return bad;
}

/// Every expert's w1, w3, w2 equal to the file's.
template <class Bank>
void variety_require_experts(const SafetensorsFile& f, const std::string& prefix, const Bank& bank) {
  for (Index e = 0; e < bank.num_experts(); ++e) {
    const std::string q = prefix + "experts." + std::to_string(e) + ".";
    INFO("expert " << e);
    REQUIRE(variety_mismatches(f, q + "w1.weight", bank.gate_proj(e)) == 0);
    REQUIRE(variety_mismatches(f, q + "w3.weight", bank.up_proj(e)) == 0);
    REQUIRE(variety_mismatches(f, q + "w2.weight", bank.down_proj(e)) == 0);
  }
}

// A small "moe." file for both new loaders (E = 4, d = 3, ff = 2, D = 2 domains): the gate,
// SwiGLU experts, the expert-to-modality table (I64, {0, -1, 1, -1} unless given) and the domain
// classifier and affinities (affinity [2, 4] unless given); `skip` leaves one tensor out.
constexpr std::int64_t variety_E = 4, variety_d = 3, variety_ff = 2, variety_D = 2;

moe::io::SafetensorsWriter variety_writer(const std::string& skip = "",
                                          std::vector<std::int64_t> table = {0, -1, 1, -1},
                                          std::vector<std::int64_t> affinity_shape = {variety_D, variety_E}) {
  moe::io::SafetensorsWriter w;
  const auto put = [&](const std::string& name, std::vector<std::int64_t> shape) {
    if (name == skip) return;
    std::int64_t n = 1;
    for (auto v : shape) n *= v;
    std::vector<float> data(static_cast<size_t>(n));
    for (size_t i = 0; i < data.size(); ++i) data[i] = 0.125f * float(static_cast<int>(i % 7) - 3);
    w.add<float>(name, std::move(shape), std::span<const float>(data));
  };
  put("moe.gate.weight", {variety_E, variety_d});
  for (std::int64_t e = 0; e < variety_E; ++e) {
    const std::string q = "moe.experts." + std::to_string(e) + ".";
    put(q + "w1.weight", {variety_ff, variety_d});
    put(q + "w3.weight", {variety_ff, variety_d});
    put(q + "w2.weight", {variety_d, variety_ff});
  }
  put("moe.domain_classifier.weight", {variety_D, variety_d});
  put("moe.domain_affinity", std::move(affinity_shape));
  if (skip != "moe.expert_modality")
    w.add<std::int64_t>("moe.expert_modality", {std::int64_t(table.size())}, std::span<const std::int64_t>(table));
  return w;
}

const std::string variety_at = "moe::io: file 'layer.safetensors': tensor ";

}  // namespace

TEMPLATE_TEST_CASE("the modality and domain-aware loaders read the golden-variety files: sizes, table, every weight",
                   "[io][loader][routing][variety]", float, double) {
  using S = TestType;
  const auto dir = moe::test::golden_variety_dir();
  SECTION("modality_experts") {
    const auto f = SafetensorsFile::open(dir / "modality_experts.safetensors");
    const std::string p = moe::test::meta(f, "prefix");
    const Index E = variety_meta_index(f, "num_experts"), d = variety_meta_index(f, "d_model");
    const Index ff = variety_meta_index(f, "d_ff"), M = variety_meta_index(f, "num_modalities");
    const Index k = variety_meta_index(f, "top_k");
    REQUIRE(moe::test::meta(f, "renormalize") == "true");
    // The table: the metadata's text, the file's I64 tensor, and the loaded router agree.
    const std::vector<Index> table = variety_parse_table(moe::test::meta(f, "expert_modality"));
    REQUIRE(static_cast<Index>(table.size()) == E);
    REQUIRE(f.info(p + "expert_modality").dtype == moe::io::DType::I64);
    const std::vector<std::int64_t> stored = f.read<std::int64_t>(p + "expert_modality");
    REQUIRE(std::vector<Index>(stored.begin(), stored.end()) == table);
    // num_modalities inferred (0): 1 + the largest entry, which in this file is M.
    const auto layer = moe::io::load_modality_experts<S>(f, p, {k, true});
    REQUIRE(layer.num_experts() == E);
    REQUIRE(layer.input_dim() == d);
    REQUIRE(layer.experts().d_ff() == ff);
    REQUIRE(layer.router().k() == k);
    REQUIRE(layer.router().gating().renormalize);
    REQUIRE(layer.router().num_modalities() == M);
    REQUIRE(layer.router().expert_modality() == table);
    for (Index m = 0; m < M; ++m) REQUIRE(layer.router().open_experts(m) >= k);
    REQUIRE(variety_mismatches(f, p + "gate.weight", layer.router().weight()) == 0);
    variety_require_experts(f, p, layer.experts());
    // num_modalities given: taken as is, here two modalities with only the cross-modal experts.
    const auto wider = moe::io::load_modality_experts<S>(f, p, {k, false, M + 2});
    REQUIRE(wider.router().num_modalities() == M + 2);
    REQUIRE(wider.router().expert_modality() == table);
    REQUIRE_FALSE(wider.router().gating().renormalize);
    REQUIRE(wider.router().weight() == layer.router().weight());
  }
  SECTION("domain_aware") {
    const auto f = SafetensorsFile::open(dir / "domain_aware.safetensors");
    const std::string p = moe::test::meta(f, "prefix");
    const Index E = variety_meta_index(f, "num_experts"), d = variety_meta_index(f, "d_model");
    const Index ff = variety_meta_index(f, "d_ff"), D = variety_meta_index(f, "num_domains");
    const Index k = variety_meta_index(f, "top_k");
    REQUIRE(moe::test::meta(f, "renormalize") == "true");
    const auto layer = moe::io::load_domain_aware<S>(f, p, {k, true});
    REQUIRE(layer.num_experts() == E);
    REQUIRE(layer.input_dim() == d);
    REQUIRE(layer.experts().d_ff() == ff);
    REQUIRE(layer.router().k() == k);
    REQUIRE(layer.router().gating().renormalize);
    REQUIRE(layer.router().num_domains() == D);
    REQUIRE(layer.router().classifier().rows() == D);
    REQUIRE(layer.router().classifier().cols() == d);
    REQUIRE(layer.router().affinity().rows() == D);
    REQUIRE(layer.router().affinity().cols() == E);
    REQUIRE(variety_mismatches(f, p + "gate.weight", layer.router().weight()) == 0);
    REQUIRE(variety_mismatches(f, p + "domain_classifier.weight", layer.router().classifier()) == 0);
    REQUIRE(variety_mismatches(f, p + "domain_affinity", layer.router().affinity()) == 0);
    variety_require_experts(f, p, layer.experts());
  }
}

TEST_CASE("load_modality_experts infers or takes num_modalities and accepts any integer table dtype",
          "[io][loader][routing]") {
  // {0, -1, 1, -1}: modalities 0 and 1 each have one expert of their own and the two
  // cross-modal ones, so 1 + the largest entry = 2.
  const auto inferred = moe::io::load_modality_experts<float>(in_memory(variety_writer()));
  REQUIRE(inferred.num_experts() == 4);
  REQUIRE(inferred.input_dim() == 3);
  REQUIRE(inferred.experts().d_ff() == 2);
  REQUIRE(inferred.router().k() == 2);
  REQUIRE(inferred.router().num_modalities() == 2);
  REQUIRE(inferred.router().expert_modality() == std::vector<Index>{0, -1, 1, -1});
  REQUIRE(inferred.router().open_experts(0) == 3);
  REQUIRE(inferred.router().open_experts(1) == 3);
  // A third modality without an expert of its own: only the config can say so.
  const auto given = moe::io::load_modality_experts<float>(in_memory(variety_writer()), "moe.", {2, true, 3});
  REQUIRE(given.router().num_modalities() == 3);
  REQUIRE(given.router().open_experts(2) == 2);
  // The largest entry inferable is E - 1 (here 3: M = 4, modalities 0..2 cross-modal only).
  const auto widest = moe::io::load_modality_experts<float>(in_memory(variety_writer("", {-1, -1, 3, -1})));
  REQUIRE(widest.router().num_modalities() == 4);
  // An all-cross-modal table: one modality.
  REQUIRE(moe::io::load_modality_experts<float>(in_memory(variety_writer("", {-1, -1, -1, -1}))).router().num_modalities() ==
          1);
  // I32 (little-endian, as safetensors stores it) reads as the same table.
  moe::io::SafetensorsWriter w = variety_writer("moe.expert_modality");
  const std::int32_t entries[4] = {1, -1, 0, 1};
  std::vector<std::byte> bytes(sizeof entries);
  std::memcpy(bytes.data(), entries, sizeof entries);
  w.add_raw("moe.expert_modality", moe::io::DType::I32, {4}, std::move(bytes));
  REQUIRE(moe::io::load_modality_experts<double>(in_memory(w)).router().expert_modality() ==
          std::vector<Index>{1, -1, 0, 1});
  // And the domain-aware loader on the same file: D from the classifier's rows.
  const auto domain = moe::io::load_domain_aware<float>(in_memory(variety_writer()), "moe.", {1, false});
  REQUIRE(domain.router().num_domains() == 2);
  REQUIRE(domain.router().k() == 1);
  REQUIRE_FALSE(domain.router().gating().renormalize);
  REQUIRE(domain.router().affinity()(1, 3) == 0.125f * float(7 % 7 - 3));  // element 7 (row-major) of the writer's cycle
}

TEST_CASE("load_modality_experts names the loader, the table and what was expected", "[io][loader][routing][errors]") {
  using moe::io::load_modality_experts;
  using moe::io::MissingTensorError;
  using moe::io::TensorMismatchError;
  const std::string table = variety_at + "'moe.expert_modality': moe::io::load_modality_experts(): ";

  REQUIRE_THROWS_AS(load_modality_experts<float>(in_memory(variety_writer("moe.expert_modality"))), MissingTensorError);
  REQUIRE_THROWS_WITH(load_modality_experts<float>(in_memory(variety_writer("moe.expert_modality"))),
                      Catch::StartsWith(table + "expected this tensor (prefix 'moe.'), but the file has no such name"));

  // An entry below -1, inferred M (the bound is then E) and given M.
  REQUIRE_THROWS_AS(load_modality_experts<float>(in_memory(variety_writer("", {0, -2, 1, -1}))), TensorMismatchError);
  REQUIRE_THROWS_WITH(load_modality_experts<float>(in_memory(variety_writer("", {0, -2, 1, -1}))),
                      Catch::StartsWith(table + "expected entries in [-1, 4), got -2 at index 1"));
  REQUIRE_THROWS_WITH(load_modality_experts<float>(in_memory(variety_writer("", {0, -1, 1, -2})), "moe.", {2, true, 2}),
                      table + "expected entries in [-1, 2), got -2 at index 3");
  // An entry at or past the configured M.
  REQUIRE_THROWS_AS(load_modality_experts<float>(in_memory(variety_writer("", {0, -1, 2, -1})), "moe.", {2, true, 2}),
                    TensorMismatchError);
  REQUIRE_THROWS_WITH(load_modality_experts<float>(in_memory(variety_writer("", {0, -1, 2, -1})), "moe.", {2, true, 2}),
                      table + "expected entries in [-1, 2), got 2 at index 2");
  // Inferred, an entry >= E would make M larger than the table can show: a small file with an
  // entry of 2^40 once set M = 2^40 + 1 and made the router's check run for hours.
  REQUIRE_THROWS_AS(load_modality_experts<float>(in_memory(variety_writer("", {-1, -1, -1, std::int64_t{1} << 40}))),
                    TensorMismatchError);
  REQUIRE_THROWS_WITH(load_modality_experts<float>(in_memory(variety_writer("", {-1, -1, -1, std::int64_t{1} << 40}))),
                      table + "expected entries in [-1, 4), got 1099511627776 at index 3 (num_modalities 0 infers M = "
                              "1 + the largest entry, at most E = 4; give ModalityConfig::num_modalities for more "
                              "modalities)");
  REQUIRE_THROWS_WITH(load_modality_experts<float>(in_memory(variety_writer("", {-1, 4, -1, -1}))),
                      Catch::StartsWith(table + "expected entries in [-1, 4), got 4 at index 1"));

  // One entry per expert.
  REQUIRE_THROWS_AS(load_modality_experts<float>(in_memory(variety_writer("", {0, -1, 1, -1, 0}))), TensorMismatchError);
  REQUIRE_THROWS_WITH(load_modality_experts<float>(in_memory(variety_writer("", {0, -1, 1, -1, 0}))),
                      table + "expected one entry per expert (4), got 5");
  REQUIRE_THROWS_WITH(load_modality_experts<float>(in_memory(variety_writer("", {0, -1, 1}))),
                      table + "expected one entry per expert (4), got 3");

  // Not an integer tensor, or not 1-D.
  moe::io::SafetensorsWriter floats = variety_writer("moe.expert_modality");
  const std::vector<float> as_float = {0.0f, -1.0f, 1.0f, -1.0f};
  floats.add<float>("moe.expert_modality", {4}, std::span<const float>(as_float));
  REQUIRE_THROWS_AS(load_modality_experts<float>(in_memory(floats)), TensorMismatchError);
  REQUIRE_THROWS_WITH(load_modality_experts<float>(in_memory(floats)),
                      table + "expected an integer dtype (I64, I32, I16, I8, U8), got F32");
  moe::io::SafetensorsWriter square = variety_writer("moe.expert_modality");
  const std::vector<std::int64_t> square_table = {0, -1, 1, -1};
  square.add<std::int64_t>("moe.expert_modality", {2, 2}, std::span<const std::int64_t>(square_table));
  REQUIRE_THROWS_WITH(load_modality_experts<float>(in_memory(square)),
                      table + "expected a non-empty 1-D tensor, got shape [2, 2]");

  // A modality with fewer than k open experts: the router's refusal, carrying the loader's name.
  // {0, 0, 0, 1}, k = 2: modality 1 has expert 3 alone.
  REQUIRE_THROWS_AS(load_modality_experts<float>(in_memory(variety_writer("", {0, 0, 0, 1}))), std::invalid_argument);
  REQUIRE_THROWS_WITH(load_modality_experts<float>(in_memory(variety_writer("", {0, 0, 0, 1}))),
                      "moe::io::load_modality_experts(): ModalityRouter::ModalityRouter(): experts open to modality 1 "
                      "(its own and the cross-modal ones) expected >= k = 2, got 1");
  // {0, -1, 1, -1} with M = 3 given and k = 3: modality 2 has only the two cross-modal experts.
  REQUIRE_THROWS_WITH(load_modality_experts<float>(in_memory(variety_writer()), "moe.", {3, true, 3}),
                      "moe::io::load_modality_experts(): ModalityRouter::ModalityRouter(): experts open to modality 2 "
                      "(its own and the cross-modal ones) expected >= k = 3, got 2");
  // The shared tensors fail as in the other "moe." loaders.
  REQUIRE_THROWS_AS(load_modality_experts<float>(in_memory(variety_writer("moe.gate.weight"))), MissingTensorError);
  REQUIRE_THROWS_WITH(load_modality_experts<float>(in_memory(variety_writer("moe.experts.3.w3.weight"))),
                      Catch::StartsWith(variety_at + "'moe.experts.3.w3.weight': moe::io::load_modality_experts(): "
                                                     "expected this tensor"));
}

TEST_CASE("load_domain_aware names the loader, the tensor and what was expected", "[io][loader][routing][errors]") {
  using moe::io::load_domain_aware;
  using moe::io::MissingTensorError;
  using moe::io::TensorMismatchError;
  const std::string classifier = variety_at + "'moe.domain_classifier.weight': moe::io::load_domain_aware(): ";
  const std::string affinity = variety_at + "'moe.domain_affinity': moe::io::load_domain_aware(): ";

  REQUIRE_THROWS_AS(load_domain_aware<float>(in_memory(variety_writer("moe.domain_classifier.weight"))),
                    MissingTensorError);
  REQUIRE_THROWS_WITH(load_domain_aware<float>(in_memory(variety_writer("moe.domain_classifier.weight"))),
                      Catch::StartsWith(classifier + "expected this tensor (prefix 'moe.'), but the file has no such name"));
  REQUIRE_THROWS_AS(load_domain_aware<float>(in_memory(variety_writer("moe.domain_affinity"))), MissingTensorError);
  REQUIRE_THROWS_WITH(load_domain_aware<float>(in_memory(variety_writer("moe.domain_affinity"))),
                      Catch::StartsWith(affinity + "expected this tensor (prefix 'moe.'), but the file has no such name"));

  // The affinities must be [D, E], D from the classifier's rows and E from the gate's.
  REQUIRE_THROWS_AS(load_domain_aware<float>(in_memory(variety_writer("", {0, -1, 1, -1}, {4, 2}))), TensorMismatchError);
  REQUIRE_THROWS_WITH(load_domain_aware<float>(in_memory(variety_writer("", {0, -1, 1, -1}, {4, 2}))),
                      affinity + "expected shape [2, 4], got [4, 2]");
  REQUIRE_THROWS_WITH(load_domain_aware<float>(in_memory(variety_writer("", {0, -1, 1, -1}, {2, 3}))),
                      affinity + "expected shape [2, 4], got [2, 3]");
  REQUIRE_THROWS_WITH(load_domain_aware<float>(in_memory(variety_writer("", {0, -1, 1, -1}, {8}))),
                      affinity + "expected shape [2, 4], got [8]");
  // A classifier of another width than the gate's.
  moe::io::SafetensorsWriter wide = variety_writer("moe.domain_classifier.weight");
  const std::vector<float> c(8, 0.5f);
  wide.add<float>("moe.domain_classifier.weight", {2, 4}, std::span<const float>(c));
  REQUIRE_THROWS_AS(load_domain_aware<float>(in_memory(wide)), TensorMismatchError);
  REQUIRE_THROWS_WITH(load_domain_aware<float>(in_memory(wide)), classifier + "expected shape [2, 3], got [2, 4]");
  // An integer classifier.
  moe::io::SafetensorsWriter ints = variety_writer("moe.domain_classifier.weight");
  const std::vector<std::int64_t> ci(6, 1);
  ints.add<std::int64_t>("moe.domain_classifier.weight", {2, 3}, std::span<const std::int64_t>(ci));
  REQUIRE_THROWS_WITH(load_domain_aware<float>(in_memory(ints)),
                      classifier + "expected a floating dtype (F32, F64, F16, BF16), got I64");
  // Router settings: the router's refusal with the loader's name.
  REQUIRE_THROWS_AS(load_domain_aware<float>(in_memory(variety_writer()), "moe.", {5}), std::invalid_argument);
  REQUIRE_THROWS_WITH(load_domain_aware<float>(in_memory(variety_writer()), "moe.", {5}),
                      "moe::io::load_domain_aware(): TopKRouter::TopKRouter(): k expected in [1, num_experts = 4], got 5");
  REQUIRE_THROWS_WITH(load_domain_aware<float>(in_memory(variety_writer("moe.experts.0.w2.weight"))),
                      Catch::StartsWith(variety_at + "'moe.experts.0.w2.weight': moe::io::load_domain_aware(): "
                                                     "expected this tensor"));
}

// --- Task-aware routing ----------------------------------------------------------------------

namespace {

// A small "moe." task-aware file (E = 4, d = 3, ff = 2): the base gate, `tasks` task routers
// task_gates.{j}.weight [4, 3] (task `wide_task` [4, 4] instead, when >= 0), the sensitivities
// [sensitivity_length] and SwiGLU experts; `skip` leaves one tensor out.
moe::io::SafetensorsWriter task_loader_writer(const std::string& skip = "", std::int64_t tasks = 3,
                                              std::int64_t sensitivity_length = 3, std::int64_t wide_task = -1) {
  moe::io::SafetensorsWriter w;
  const auto put = [&](const std::string& name, std::vector<std::int64_t> shape) {
    if (name == skip) return;
    std::int64_t n = 1;
    for (auto v : shape) n *= v;
    std::vector<float> data(static_cast<size_t>(n));
    for (size_t i = 0; i < data.size(); ++i) data[i] = 0.25f * float(static_cast<int>(i % 5) - 2) + 0.0625f * float(n % 3);
    w.add<float>(name, std::move(shape), std::span<const float>(data));
  };
  put("moe.gate.weight", {variety_E, variety_d});
  for (std::int64_t j = 0; j < tasks; ++j)
    put("moe.task_gates." + std::to_string(j) + ".weight", {variety_E, j == wide_task ? variety_d + 1 : variety_d});
  put("moe.task_sensitivity", {sensitivity_length});
  for (std::int64_t e = 0; e < variety_E; ++e) {
    const std::string q = "moe.experts." + std::to_string(e) + ".";
    put(q + "w1.weight", {variety_ff, variety_d});
    put(q + "w3.weight", {variety_ff, variety_d});
    put(q + "w2.weight", {variety_d, variety_ff});
  }
  return w;
}

}  // namespace

TEMPLATE_TEST_CASE("load_task_aware reads the golden-variety file: sizes, task routers, sensitivities, every weight",
                   "[io][loader][routing][variety][task]", float, double) {
  using S = TestType;
  const auto f = SafetensorsFile::open(moe::test::golden_variety_dir() / "task_aware.safetensors");
  const std::string p = moe::test::meta(f, "prefix");
  const Index E = variety_meta_index(f, "num_experts"), d = variety_meta_index(f, "d_model");
  const Index ff = variety_meta_index(f, "d_ff"), N = variety_meta_index(f, "num_tasks");
  const Index k = variety_meta_index(f, "top_k");
  REQUIRE(moe::test::meta(f, "renormalize") == "true");
  const auto layer = moe::io::load_task_aware<S>(f, p, {k, true});
  REQUIRE(layer.num_experts() == E);
  REQUIRE(layer.input_dim() == d);
  REQUIRE(layer.experts().d_ff() == ff);
  REQUIRE(layer.router().k() == k);
  REQUIRE(layer.router().gating().renormalize);
  REQUIRE(layer.router().num_tasks() == N);
  REQUIRE(variety_mismatches(f, p + "gate.weight", layer.router().weight()) == 0);
  for (Index j = 0; j < N; ++j) {
    INFO("task " << j);
    REQUIRE(variety_mismatches(f, p + "task_gates." + std::to_string(j) + ".weight", layer.router().task_gate(j)) == 0);
  }
  REQUIRE(f.info(p + "task_sensitivity").shape == std::vector<std::int64_t>{N});
  const std::vector<float> a = f.read<float>(p + "task_sensitivity");
  for (Index j = 0; j < N; ++j) REQUIRE(layer.router().sensitivity()[j] == static_cast<S>(a[static_cast<size_t>(j)]));
  variety_require_experts(f, p, layer.experts());
}

TEST_CASE("load_task_aware counts the task routers and reads the settings", "[io][loader][routing][task]") {
  const auto three = moe::io::load_task_aware<float>(in_memory(task_loader_writer()));
  REQUIRE(three.num_experts() == 4);
  REQUIRE(three.input_dim() == 3);
  REQUIRE(three.experts().d_ff() == 2);
  REQUIRE(three.router().num_tasks() == 3);
  REQUIRE(three.router().k() == 2);
  REQUIRE(three.router().gating().renormalize);
  // Element 5 (row 1, column 2) of a 12-element tensor: 0.25 * (5 % 5 - 2) + 0.0625 * (12 % 3).
  REQUIRE(three.router().task_gate(2)(1, 2) == -0.5f);
  // The sensitivities [3]: element 1 is 0.25 * (1 - 2) + 0.0625 * (3 % 3).
  REQUIRE(three.router().sensitivity()[1] == -0.25f);
  const auto one = moe::io::load_task_aware<double>(in_memory(task_loader_writer("", 1, 1)), "moe.", {1, false});
  REQUIRE(one.router().num_tasks() == 1);
  REQUIRE(one.router().k() == 1);
  REQUIRE_FALSE(one.router().gating().renormalize);
}

TEST_CASE("load_task_aware names the loader, the tensor and what was expected", "[io][loader][routing][errors][task]") {
  using moe::io::load_task_aware;
  using moe::io::MissingTensorError;
  using moe::io::TensorMismatchError;
  const std::string sensitivity = variety_at + "'moe.task_sensitivity': moe::io::load_task_aware(): ";

  // No task router at all.
  REQUIRE_THROWS_AS(load_task_aware<float>(in_memory(task_loader_writer("", 0, 0))), MissingTensorError);
  REQUIRE_THROWS_WITH(load_task_aware<float>(in_memory(task_loader_writer("", 0, 0))),
                      Catch::StartsWith(variety_at + "'moe.task_gates.0.weight': moe::io::load_task_aware(): expected at "
                                                     "least one task router under this name (prefix 'moe.'), but the "
                                                     "file has none"));
  // The sensitivities: missing, of another length than the task routers' count, not 1-D.
  REQUIRE_THROWS_AS(load_task_aware<float>(in_memory(task_loader_writer("moe.task_sensitivity"))), MissingTensorError);
  REQUIRE_THROWS_WITH(load_task_aware<float>(in_memory(task_loader_writer("moe.task_sensitivity"))),
                      Catch::StartsWith(sensitivity + "expected this tensor (prefix 'moe.'), but the file has no such name"));
  REQUIRE_THROWS_AS(load_task_aware<float>(in_memory(task_loader_writer("", 3, 4))), TensorMismatchError);
  REQUIRE_THROWS_WITH(load_task_aware<float>(in_memory(task_loader_writer("", 3, 4))),
                      sensitivity + "expected one entry per task router (3: task_gates.0.weight to "
                                    "task_gates.2.weight), got 4");
  REQUIRE_THROWS_WITH(load_task_aware<float>(in_memory(task_loader_writer("", 3, 2))),
                      sensitivity + "expected one entry per task router (3: task_gates.0.weight to "
                                    "task_gates.2.weight), got 2");
  // A gap in the numbering: task_gates.1 missing, so only task 0 is counted.
  REQUIRE_THROWS_WITH(load_task_aware<float>(in_memory(task_loader_writer("moe.task_gates.1.weight"))),
                      sensitivity + "expected one entry per task router (1: task_gates.0.weight to "
                                    "task_gates.0.weight), got 3");
  moe::io::SafetensorsWriter square = task_loader_writer("moe.task_sensitivity");
  const std::vector<float> four(4, 0.5f);
  square.add<float>("moe.task_sensitivity", {2, 2}, std::span<const float>(four));
  REQUIRE_THROWS_WITH(load_task_aware<float>(in_memory(square)), sensitivity + "expected a 1-D tensor, got shape [2, 2]");
  // A task router of another width than the gate's.
  REQUIRE_THROWS_AS(load_task_aware<float>(in_memory(task_loader_writer("", 3, 3, 1))), TensorMismatchError);
  REQUIRE_THROWS_WITH(load_task_aware<float>(in_memory(task_loader_writer("", 3, 3, 1))),
                      variety_at + "'moe.task_gates.1.weight': moe::io::load_task_aware(): expected shape [4, 3], got "
                                   "[4, 4]");
  // An integer task router.
  moe::io::SafetensorsWriter ints = task_loader_writer("moe.task_gates.2.weight");
  const std::vector<std::int64_t> gi(12, 1);
  ints.add<std::int64_t>("moe.task_gates.2.weight", {4, 3}, std::span<const std::int64_t>(gi));
  REQUIRE_THROWS_WITH(load_task_aware<float>(in_memory(ints)),
                      variety_at + "'moe.task_gates.2.weight': moe::io::load_task_aware(): expected a floating dtype "
                                   "(F32, F64, F16, BF16), got I64");
  // Router settings: the router's refusal with the loader's name.
  REQUIRE_THROWS_AS(load_task_aware<float>(in_memory(task_loader_writer()), "moe.", {5}), std::invalid_argument);
  REQUIRE_THROWS_WITH(load_task_aware<float>(in_memory(task_loader_writer()), "moe.", {5}),
                      "moe::io::load_task_aware(): TopKRouter::TopKRouter(): k expected in [1, num_experts = 4], got 5");
  // The shared tensors fail as in the other "moe." loaders.
  REQUIRE_THROWS_AS(load_task_aware<float>(in_memory(task_loader_writer("moe.gate.weight"))), MissingTensorError);
  REQUIRE_THROWS_WITH(load_task_aware<float>(in_memory(task_loader_writer("moe.experts.1.w3.weight"))),
                      Catch::StartsWith(variety_at + "'moe.experts.1.w3.weight': moe::io::load_task_aware(): "
                                                     "expected this tensor"));
}
