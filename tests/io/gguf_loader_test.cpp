// The GGUF layer loader and writer (moe/io/gguf_loader.hpp). For each of the five families and
// each of Q8_0, Q4_0, Q4_K and BF16 expert tensors, a layer written by save_gguf_layer loads as
// the family's alias (quantized or float), and its output stays within the type's documented
// bound of the float64 layer built from the same dequantized weights
// (docs/quantization.md#quantized-expert-banks); quantized layers come back block for block and
// bit for bit, F32 ones bit for bit; the older one-tensor-per-expert Mixtral layout; and every
// refusal, loader's and writer's, with its message.
#include <catch2/catch.hpp>

#include "support/errors.hpp"
#include "support/golden.hpp"
#include "support/random.hpp"
#include "support/temp_dir.hpp"

#include <moe/io/gguf_loader.hpp>
#include <moe/layer/quantized_layers.hpp>
#include <moe/layer/workspace.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

namespace gguf_loader_test {

using moe::Index;
using moe::RowMatrix;
using moe::io::GgmlType;
using moe::io::GgufFamily;
using moe::io::GgufFile;
using moe::io::GgufWriter;
using moe::kernels::BlockQ4_0;
using moe::kernels::BlockQ4_K;
using moe::kernels::BlockQ8_0;
using moe::test::random_matrix;

constexpr Index kD = 256, kFF = 256, kT = 32;

// ---------------------------------------------------------------------------------------------
// Random float layers, one per family (weights scaled so the activations are of order 1).

moe::SwiGLUExperts<float> swiglu(Index E, Index ff, std::mt19937& rng) {
  moe::SwiGLUExperts<float> bank(E, kD, ff);
  bank.gate_up() = random_matrix<float>(E * 2 * ff, kD, rng) * 0.06f;
  bank.down() = random_matrix<float>(E * kD, ff, rng) * 0.06f;
  return bank;
}

moe::MixtralMoE<float> mixtral(unsigned seed, bool renormalize = true) {
  constexpr Index kE = 4;
  std::mt19937 rng(seed);
  moe::SoftmaxTopKRouter<float> router(random_matrix<float>(kE, kD, rng) * 0.1f, 2, moe::SoftmaxTopK<float>{renormalize});
  return {swiglu(kE, kFF, rng), std::move(router)};
}

moe::Qwen2MoE<float> qwen2_moe(unsigned seed) {
  constexpr Index kE = 6;
  std::mt19937 rng(seed);
  moe::SoftmaxTopKRouter<float> router(random_matrix<float>(kE, kD, rng) * 0.1f, 4, moe::SoftmaxTopK<float>{false});
  moe::SharedExpertCombiner<moe::SwiGLUExperts<float>, moe::SharedGate::sigmoid> combiner(swiglu(1, 2 * kFF, rng));
  combiner.gate_weight() = random_matrix<float>(kD, 1, rng).col(0) * 0.1f;
  return {swiglu(kE, kFF, rng), std::move(router), std::move(combiner)};
}

moe::DeepSeekV3MoE<float> deepseek_v3(unsigned seed) {
  constexpr Index kE = 8;
  std::mt19937 rng(seed);
  moe::SigmoidGroupLimited<float> gating;
  gating.n_group = 4;
  gating.topk_group = 2;
  gating.routed_scaling_factor = 2.5f;
  gating.renormalize = true;
  gating.correction_bias = random_matrix<float>(kE, 1, rng).col(0) * 0.05f;
  moe::GroupLimitedRouter<float> router(random_matrix<float>(kE, kD, rng) * 0.1f, 2, std::move(gating));
  moe::SharedExpertCombiner<moe::SwiGLUExperts<float>, moe::SharedGate::none> combiner(swiglu(1, 2 * kFF, rng));
  return {swiglu(kE, kFF, rng), std::move(router), std::move(combiner)};
}

moe::GptOssMoE<float> gpt_oss(unsigned seed) {
  constexpr Index kE = 4;
  std::mt19937 rng(seed);
  moe::GptOssExperts<float> bank(kE, kD, kFF);
  bank.gate_up() = random_matrix<float>(kE * kD, 2 * kFF, rng) * 0.06f;
  bank.down() = random_matrix<float>(kE * kFF, kD, rng) * 0.06f;
  bank.gate_up_bias() = random_matrix<float>(kE, 2 * kFF, rng) * 0.1f;
  bank.down_bias() = random_matrix<float>(kE, kD, rng) * 0.1f;
  moe::TopKSoftmaxRouter<float> router(random_matrix<float>(kE, kD, rng) * 0.1f, 2, {},
                                       random_matrix<float>(kE, 1, rng).col(0) * 0.1f);
  return {std::move(bank), std::move(router)};
}

// ---------------------------------------------------------------------------------------------
// The float64 twin of a layer: its weights (a quantized bank's dequantized) in double.

template <class Bank>
auto float_bank(const Bank& bank) {
  if constexpr (requires { bank.dequantize(); }) return bank.dequantize();
  else return bank;
}

moe::SwiGLUExperts<double> to_double(const moe::SwiGLUExperts<float>& f) {
  moe::SwiGLUExperts<double> d(f.num_experts(), f.input_dim(), f.d_ff());
  d.gate_up() = f.gate_up().cast<double>();
  d.down() = f.down().cast<double>();
  return d;
}

moe::GptOssExperts<double> to_double(const moe::GptOssExperts<float>& f) {
  // GGUF stores no alpha or limit: llama.cpp's 1.702 and 7, in double here (as the loader's).
  REQUIRE(f.alpha() == 1.702f);
  REQUIRE(f.limit() == 7.0f);
  moe::GptOssExperts<double> d(f.num_experts(), f.input_dim(), f.d_ff());
  d.gate_up() = f.gate_up().cast<double>();
  d.down() = f.down().cast<double>();
  d.gate_up_bias() = f.gate_up_bias().cast<double>();
  d.down_bias() = f.down_bias().cast<double>();
  return d;
}

moe::SoftmaxTopKRouter<double> to_double(const moe::SoftmaxTopKRouter<float>& r) {
  return {r.weight().cast<double>(), r.k(), moe::SoftmaxTopK<double>{r.gating().renormalize}};
}

moe::TopKSoftmaxRouter<double> to_double(const moe::TopKSoftmaxRouter<float>& r) {
  return {r.weight().cast<double>(), r.k(), {}, r.bias().cast<double>()};
}

moe::GroupLimitedRouter<double> to_double(const moe::GroupLimitedRouter<float>& r) {
  moe::SigmoidGroupLimited<double> g;
  g.n_group = r.gating().n_group;
  g.topk_group = r.gating().topk_group;
  g.routed_scaling_factor = double(r.gating().routed_scaling_factor);
  g.renormalize = r.gating().renormalize;
  g.correction_bias = r.gating().correction_bias.cast<double>();
  return {r.weight().cast<double>(), r.k(), std::move(g)};
}

template <class Layer>
auto float64_twin(const Layer& l) {
  auto experts = to_double(float_bank(l.experts()));
  auto router = to_double(l.router());
  using C = typename Layer::combiner_type;
  if constexpr (std::is_same_v<C, moe::WeightedSumCombiner<float>>) {
    return moe::MoELayer<decltype(experts), decltype(router), moe::WeightedSumCombiner<double>>(std::move(experts),
                                                                                                std::move(router));
  } else {
    moe::SharedExpertCombiner<moe::SwiGLUExperts<double>, C::gate_kind> c(to_double(float_bank(l.combiner().shared_expert())));
    c.gate_weight() = l.combiner().gate_weight().template cast<double>();
    return moe::MoELayer<decltype(experts), decltype(router), decltype(c)>(std::move(experts), std::move(router), std::move(c));
  }
}

template <class Layer>
RowMatrix<typename Layer::scalar_type> run(const Layer& l, const RowMatrix<float>& x) {
  moe::Workspace<typename Layer::scalar_type> ws;
  return l.forward(x.cast<typename Layer::scalar_type>(), ws);
}

bool same_bits(const RowMatrix<float>& a, const RowMatrix<float>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() && std::memcmp(a.data(), b.data(), sizeof(float) * a.size()) == 0;
}

/// Every projection's blocks of two quantized banks, byte for byte.
template <class Bank>
bool same_blocks(const Bank& a, const Bank& b) {
  const auto bytes = [](const auto& m) {
    const auto blocks = m.to_blocks();
    std::vector<unsigned char> out(blocks.size() * sizeof(blocks[0]));
    std::memcpy(out.data(), blocks.data(), out.size());
    return out;
  };
  if (a.num_experts() != b.num_experts()) return false;
  for (Index e = 0; e < a.num_experts(); ++e)
    if (bytes(a.gate_up(e)) != bytes(b.gate_up(e)) || bytes(a.down(e)) != bytes(b.down(e))) return false;
  return true;
}

// ---------------------------------------------------------------------------------------------
// One family at one type.

struct TypeQ8_0 {
  using block = BlockQ8_0;
  static constexpr GgmlType type = GgmlType::Q8_0;
};
struct TypeQ4_0 {
  using block = BlockQ4_0;
  static constexpr GgmlType type = GgmlType::Q4_0;
};
struct TypeQ4_K {
  using block = BlockQ4_K;
  static constexpr GgmlType type = GgmlType::Q4_K;
};
struct TypeBF16 {
  using block = void;
  static constexpr GgmlType type = GgmlType::BF16;
};

/// Writes the float layer at Tag's type as block 2, loads it, runs it and checks it against
/// its float64 twin; returns the measured error.
template <class Tag, class FloatLayer>
double check_family(const FloatLayer& float_layer, GgufFamily family) {
  constexpr bool quantized = !std::is_void_v<typename Tag::block>;
  const auto stored = [&] {
    if constexpr (quantized) return moe::quantize_layer<typename Tag::block>(float_layer);
    else return float_layer;
  }();
  using Stored = std::decay_t<decltype(stored)>;
  GgufWriter w;
  moe::io::save_gguf_layer(w, stored, 2, family, {.expert_type = Tag::type});
  const std::vector<std::byte> bytes = w.to_bytes();
  const auto file = GgufFile::from_bytes(bytes, "layer.gguf");

  const auto info = moe::io::describe_gguf_layer(file, 2);
  CHECK(info.family == family);
  CHECK(info.architecture == moe::io::gguf_architecture(family));
  CHECK(info.expert_type == Tag::type);
  CHECK(info.quantized() == quantized);
  CHECK(info.num_experts == float_layer.num_experts());
  CHECK(info.top_k == float_layer.router().k());
  CHECK(info.d_model == kD);
  CHECK(info.d_ff == kFF);
  CHECK(info.stacked);

  std::mt19937 rng(77);
  const RowMatrix<float> x = random_matrix<float>(kT, kD, rng);
  RowMatrix<float> y;
  RowMatrix<double> y64;
  bool right_type = false, same_weights = true;
  std::vector<std::byte> resaved;
  moe::io::visit_gguf_layer(file, 2, [&](auto& layer) {
    using L = std::decay_t<decltype(layer)>;
    right_type = std::is_same_v<L, Stored>;
    y = run(layer, x);
    y64 = run(float64_twin(layer), x);
    if constexpr (std::is_same_v<L, Stored>) {
      if constexpr (quantized) {
        same_weights = same_blocks(layer.experts(), stored.experts());
        if constexpr (!std::is_same_v<typename Stored::combiner_type, moe::WeightedSumCombiner<float>>)
          same_weights = same_weights && same_blocks(layer.combiner().shared_expert(), stored.combiner().shared_expert());
      }
      GgufWriter again;
      moe::io::save_gguf_layer(again, layer, 2, family, {.expert_type = Tag::type});
      resaved = again.to_bytes();
    }
  });
  REQUIRE(right_type);
  CHECK(same_weights);
  CHECK(resaved == bytes);  // load then save gives the file back, byte for byte
  if constexpr (quantized) CHECK(same_bits(y, run(stored, x)));

  // The loader's dequantizing path (visit_gguf_layer_as) gives the twin's weights exactly.
  const RowMatrix<double> y64_read = moe::io::visit_gguf_layer_as<double>(file, 2, [&](auto& l) { return run(l, x); });
  INFO(moe::io::gguf_family_name(family) << " " << moe::io::ggml_type_name(Tag::type));
  CHECK((y64_read - y64).cwiseAbs().maxCoeff() == 0.0);

  const double err = moe::test::max_relative_error(y, y64);
  INFO(moe::io::gguf_family_name(family) << " " << moe::io::ggml_type_name(Tag::type) << ": max relative error " << err);
  CHECK(err < moe::io::gguf_layer_error_bound(Tag::type));
  CHECK(err > 0);
  return err;
}

}  // namespace gguf_loader_test

TEMPLATE_TEST_CASE("GGUF layers of every family load as their alias and stay within their type's bound of float64",
                   "[io][gguf][quant]", gguf_loader_test::TypeQ8_0, gguf_loader_test::TypeQ4_0,
                   gguf_loader_test::TypeQ4_K, gguf_loader_test::TypeBF16) {
  using namespace gguf_loader_test;
  const double errors[] = {
      check_family<TestType>(mixtral(1), GgufFamily::mixtral),
      check_family<TestType>(mixtral(2, false), GgufFamily::olmoe),
      check_family<TestType>(qwen2_moe(3), GgufFamily::qwen2_moe),
      check_family<TestType>(deepseek_v3(4), GgufFamily::deepseek_v3),
      check_family<TestType>(gpt_oss(5), GgufFamily::gpt_oss),
  };
  WARN(moe::io::ggml_type_name(TestType::type) << " vs float64 (mixtral, olmoe, qwen2_moe, deepseek_v3, gpt_oss): "
                                               << errors[0] << " " << errors[1] << " " << errors[2] << " " << errors[3]
                                               << " " << errors[4]);
}

namespace gguf_loader_test {

/// A float layer written with F32 experts comes back as the same C++ type, bit for bit.
template <class FloatLayer>
void check_f32_round_trip(const FloatLayer& layer, GgufFamily family) {
  INFO(moe::io::gguf_family_name(family));
  GgufWriter w;
  moe::io::save_gguf_layer(w, layer, 0, family);
  const auto file = GgufFile::from_bytes(w.to_bytes(), "f32.gguf");
  CHECK(moe::io::describe_gguf_layer(file, 0).expert_type == GgmlType::F32);
  const auto loaded = moe::io::load_gguf_layer<FloatLayer>(file, 0);
  std::mt19937 rng(5);
  const RowMatrix<float> x = random_matrix<float>(kT, kD, rng);
  CHECK(same_bits(run(loaded, x), run(layer, x)));
}

// ---------------------------------------------------------------------------------------------
// Hand-built files for the refusals: a llama (Mixtral) layer, d 256, ff 256, 4 experts, top-2,
// Q8_0 experts and an F32 router, with edits.

struct Edit {
  std::string arch = "llama";
  std::set<std::string> drop;                                    // full metadata keys, or tensor names after "blk.0."
  std::map<std::string, std::uint32_t> u32;                      // keys after "{arch}.": added or replaced
  std::map<std::string, GgmlType> type;                          // tensor name after "blk.0." -> its type
  std::map<std::string, std::vector<std::int64_t>> ne;           // tensor name after "blk.0." -> its ne
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> extra;  // more tensors (F32 unless typed)
};

std::vector<std::byte> edited(const Edit& e) {
  GgufWriter w;
  const std::string p = e.arch + ".";
  if (!e.drop.count("general.architecture")) w.set("general.architecture", e.arch);
  std::map<std::string, std::uint32_t> keys{
      {"expert_count", 4}, {"expert_used_count", 2}, {"embedding_length", 256}, {"feed_forward_length", 256}};
  for (const auto& [k, v] : e.u32) keys[k] = v;
  for (const auto& [k, v] : keys)
    if (!e.drop.count(p + k)) w.set(p + k, v);
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> tensors{{"ffn_gate_inp.weight", {256, 4}},
                                                                         {"ffn_gate_exps.weight", {256, 256, 4}},
                                                                         {"ffn_up_exps.weight", {256, 256, 4}},
                                                                         {"ffn_down_exps.weight", {256, 256, 4}}};
  tensors.insert(tensors.end(), e.extra.begin(), e.extra.end());
  std::mt19937 rng(9);
  for (auto [name, ne] : tensors) {
    if (e.drop.count(name)) continue;
    if (e.ne.count(name)) ne = e.ne.at(name);
    const bool is_expert = name.find("_exps.") != std::string::npos || name.find("_shexp.") != std::string::npos ||
                           name.find("ffn_gate.") == 0 || name.find("ffn_up.") == 0 || name.find("ffn_down.") == 0;
    const GgmlType type = e.type.count(name) ? e.type.at(name) : (is_expert ? GgmlType::Q8_0 : GgmlType::F32);
    std::int64_t n = 1;
    for (const auto v : ne) n *= v;
    const auto* ti = moe::io::ggml_type_info(static_cast<std::uint32_t>(type));
    if (ti->to_float) {
      const RowMatrix<float> values = random_matrix<float>(1, n, rng) * 0.05f;
      w.add_tensor("blk.0." + name, type, ne, std::span<const float>(values.data(), static_cast<std::size_t>(n)));
    } else {
      w.add_tensor("blk.0." + name, type, ne, std::vector<std::byte>(static_cast<std::size_t>(n) / ti->block * ti->bytes));
    }
  }
  return w.to_bytes();
}

GgufFile edited_file(const Edit& e) { return GgufFile::from_bytes(edited(e), "edit.gguf"); }

/// A DeepSeek-V3 (deepseek2) edit: 8 experts in 4 groups, one shared expert.
Edit deepseek_edit() {
  Edit e;
  e.arch = "deepseek2";
  e.drop = {"deepseek2.feed_forward_length"};
  e.u32 = {{"expert_count", 8},
           {"expert_feed_forward_length", 256},
           {"expert_shared_count", 1},
           {"expert_gating_func", 2},
           {"expert_group_count", 4},
           {"expert_group_used_count", 2}};
  e.ne = {{"ffn_gate_inp.weight", {256, 8}},
          {"ffn_gate_exps.weight", {256, 256, 8}},
          {"ffn_up_exps.weight", {256, 256, 8}},
          {"ffn_down_exps.weight", {256, 256, 8}}};
  e.extra = {{"ffn_gate_shexp.weight", {256, 256}},
             {"ffn_up_shexp.weight", {256, 256}},
             {"ffn_down_shexp.weight", {256, 256}},
             {"exp_probs_b.bias", {8}}};
  return e;
}

template <class Error, class F>
void require_error(F&& f, const std::string& message) {
  REQUIRE_THROWS_AS(f(), Error);
  REQUIRE_THROWS_WITH(f(), message);
}

/// describe_gguf_layer(edited_file(e), 0) must throw Error with this message after the file's prefix.
template <class Error>
void refused(const Edit& e, const std::string& message) {
  const GgufFile f = edited_file(e);
  require_error<Error>([&] { (void)moe::io::describe_gguf_layer(f, 0); }, "moe::io: file 'edit.gguf': " + message);
  require_error<Error>([&] { moe::io::visit_gguf_layer(f, 0, [](auto&) {}); }, "moe::io: file 'edit.gguf': " + message);
}

}  // namespace gguf_loader_test

TEST_CASE("GGUF layers with F32 experts come back bit for bit", "[io][gguf]") {
  using namespace gguf_loader_test;
  check_f32_round_trip(mixtral(11), GgufFamily::mixtral);
  check_f32_round_trip(mixtral(12, false), GgufFamily::olmoe);
  check_f32_round_trip(qwen2_moe(13), GgufFamily::qwen2_moe);
  check_f32_round_trip(deepseek_v3(14), GgufFamily::deepseek_v3);
  check_f32_round_trip(gpt_oss(15), GgufFamily::gpt_oss);
}

TEST_CASE("GGUF: the older layout of one tensor per expert loads as the stacked one", "[io][gguf]") {
  using namespace gguf_loader_test;
  // Older Mixtral files: blk.N.ffn_{gate,up,down}.{e}.weight, each [ff, d] or [d, ff].
  const auto q = moe::quantize_layer<BlockQ4_0>(mixtral(21));
  GgufWriter stacked;
  moe::io::save_gguf_layer(stacked, q, 0, GgufFamily::mixtral);
  GgufWriter per_expert;
  per_expert.set("general.architecture", "llama")
      .set("llama.expert_count", std::uint32_t{4})
      .set("llama.expert_used_count", std::uint32_t{2})
      .set("llama.embedding_length", std::uint32_t{kD})
      .set("llama.feed_forward_length", std::uint32_t{kFF});
  std::vector<float> router;
  for (Index e = 0; e < 4; ++e)
    for (Index c = 0; c < kD; ++c) router.push_back(q.router().weight()(e, c));
  per_expert.add_tensor("blk.0.ffn_gate_inp.weight", GgmlType::F32, {kD, 4}, std::span<const float>(router));
  const auto bytes = [](const auto& m, Index first, Index count) {
    std::vector<BlockQ4_0> blocks(static_cast<std::size_t>(count * m.blocks_per_row()));
    m.get_rows(first, count, blocks.data());
    std::vector<std::byte> out(blocks.size() * sizeof(BlockQ4_0));
    std::memcpy(out.data(), blocks.data(), out.size());
    return out;
  };
  for (Index e = 0; e < 4; ++e) {
    const std::string x = "." + std::to_string(e) + ".weight";
    per_expert.add_tensor("blk.0.ffn_gate" + x, GgmlType::Q4_0, {kD, kFF}, bytes(q.experts().gate_up(e), 0, kFF));
    per_expert.add_tensor("blk.0.ffn_up" + x, GgmlType::Q4_0, {kD, kFF}, bytes(q.experts().gate_up(e), kFF, kFF));
    per_expert.add_tensor("blk.0.ffn_down" + x, GgmlType::Q4_0, {kFF, kD}, bytes(q.experts().down(e), 0, kD));
  }
  const auto file = GgufFile::from_bytes(per_expert.to_bytes(), "old.gguf");
  const auto info = moe::io::describe_gguf_layer(file, 0);
  CHECK_FALSE(info.stacked);
  CHECK(info.tensors.size() == 1 + 3 * 4);
  CHECK(info.tensors[1].name == "blk.0.ffn_gate.0.weight");
  const auto loaded = moe::io::load_gguf_layer<moe::QuantizedMixtralMoE<BlockQ4_0>>(file, 0);
  CHECK(same_blocks(loaded.experts(), q.experts()));
  std::mt19937 rng(22);
  const RowMatrix<float> x = random_matrix<float>(kT, kD, rng);
  CHECK(same_bits(run(loaded, x), run(q, x)));
  // Saving writes the stacked layout.
  GgufWriter again;
  moe::io::save_gguf_layer(again, loaded, 0, GgufFamily::mixtral);
  CHECK(again.to_bytes() == stacked.to_bytes());
}

TEST_CASE("GGUF: newer files' fused ffn_gate_up_exps loads as the separate tensors", "[io][gguf]") {
  using namespace gguf_loader_test;
  // llama.cpp reads blk.N.ffn_gate_up_exps.weight [d, 2 ff, E] first when a file has it: expert
  // e's gate rows, then its up rows, the layout of QuantizedSwiGLUExperts::gate_up(e).
  const auto q = moe::quantize_layer<BlockQ8_0>(deepseek_v3(23));
  GgufWriter separate;
  moe::io::save_gguf_layer(separate, q, 0, GgufFamily::deepseek_v3);
  const auto reference = GgufFile::from_bytes(separate.to_bytes(), "separate.gguf");
  GgufWriter fused;
  for (const auto& v : reference.metadata()) {
    if (v.type() == moe::io::GgufType::STRING) fused.set(v.key(), v.as<std::string>());
    else if (v.type() == moe::io::GgufType::U32) fused.set(v.key(), v.as<std::uint32_t>());
    else if (v.type() == moe::io::GgufType::F32) fused.set(v.key(), v.as<float>());
    else fused.set(v.key(), v.as<bool>());
  }
  for (const auto& t : reference.tensors()) {
    if (t.name == "blk.0.ffn_up_exps.weight") continue;
    const auto raw = reference.raw(t.name);
    std::vector<std::byte> bytes(raw.begin(), raw.end());
    if (t.name != "blk.0.ffn_gate_exps.weight") {
      fused.add_tensor(t.name, t.type, t.ne, std::move(bytes));
      continue;
    }
    std::vector<std::byte> gate_up;
    for (Index e = 0; e < q.num_experts(); ++e) {
      const auto blocks = q.experts().gate_up(e).to_blocks();
      const auto* p = reinterpret_cast<const std::byte*>(blocks.data());
      gate_up.insert(gate_up.end(), p, p + blocks.size() * sizeof(BlockQ8_0));
    }
    fused.add_tensor("blk.0.ffn_gate_up_exps.weight", t.type, {kD, 2 * kFF, q.num_experts()}, std::move(gate_up));
  }
  const auto file = GgufFile::from_bytes(fused.to_bytes(), "fused.gguf");
  const auto info = moe::io::describe_gguf_layer(file, 0);
  CHECK(info.fused_gate_up);
  CHECK(info.find("gate_up")->ne == std::vector<std::int64_t>{kD, 2 * kFF, 8});
  CHECK(info.find("gate") == nullptr);
  const auto loaded = moe::io::load_gguf_layer<moe::QuantizedDeepSeekV3MoE<BlockQ8_0>>(file, 0);
  CHECK(same_blocks(loaded.experts(), q.experts()));
  std::mt19937 rng(24);
  const RowMatrix<float> x = random_matrix<float>(kT, kD, rng);
  CHECK(same_bits(run(loaded, x), run(q, x)));
  // The float path reads the same rows.
  const auto as_float = moe::io::load_gguf_layer<moe::DeepSeekV3MoE<float>>(file, 0);
  CHECK(as_float.experts().gate_up() == q.experts().dequantize().gate_up());
}

TEST_CASE("GGUF: load_gguf_layer builds the type asked for, or says why not", "[io][gguf]") {
  using namespace gguf_loader_test;
  const auto q8 = moe::quantize_layer<BlockQ8_0>(mixtral(31));
  GgufWriter w;
  moe::io::save_gguf_layer(w, q8, 1, GgufFamily::mixtral);
  const auto file = GgufFile::from_bytes(w.to_bytes(), "q8.gguf");
  // A float layer of any type: the blocks dequantized, as QuantMatrix::dequantize gives them.
  const auto as_float = moe::io::load_gguf_layer<moe::MixtralMoE<float>>(file, 1);
  const auto deq = q8.experts().dequantize();
  CHECK(as_float.experts().gate_up() == deq.gate_up());
  CHECK(as_float.experts().down() == deq.down());
  CHECK(as_float.router().weight() == q8.router().weight());
  require_error<moe::io::TensorMismatchError>(
      [&] { (void)moe::io::load_gguf_layer<moe::QuantizedMixtralMoE<BlockQ4_0>>(file, 1); },
      "moe::io: file 'q8.gguf': tensor 'blk.1.ffn_gate_exps.weight': expected Q4_0 experts (a quantized layer takes "
      "the file's blocks as they are: no requantization; a float layer takes any type), got Q8_0 (type 8)");
  require_error<moe::io::TensorMismatchError>(
      [&] { (void)moe::io::load_gguf_layer<moe::Qwen2MoE<float>>(file, 1); },
      "moe::io: file 'q8.gguf': tensor 'blk.1.ffn_gate_inp.weight': expected a qwen2_moe layer (the type asked for), "
      "got a mixtral layer (general.architecture 'llama')");
  require_error<moe::io::MissingTensorError>(
      [&] { (void)moe::io::describe_gguf_layer(file, 0); },
      "moe::io: file 'q8.gguf': tensor 'blk.0.ffn_gate_inp.weight': expected a tensor of this name, got none among "
      "the file's 4 tensors; close names: 'blk.1.ffn_gate_inp.weight', 'blk.1.ffn_gate_exps.weight'");
  moe::test::require_invalid([&] { (void)moe::io::describe_gguf_layer(file, -1); },
                             {"moe::io::describe_gguf_layer(): layer (block index) expected >= 0, got -1"});
}

TEST_CASE("GGUF loader: every refusal names the tensor or key, what was expected and what came", "[io][gguf]") {
  using namespace gguf_loader_test;
  using moe::io::MetadataError;
  using moe::io::MissingMetadataError;
  using moe::io::MissingTensorError;
  using moe::io::TensorMismatchError;
  // The unedited file loads.
  moe::io::visit_gguf_layer(edited_file({}), 0, [](auto& layer) {
    CHECK(std::is_same_v<std::decay_t<decltype(layer)>, moe::QuantizedMixtralMoE<BlockQ8_0>>);
  });

  SECTION("types") {
    Edit mixed;
    mixed.type = {{"ffn_down_exps.weight", GgmlType::Q4_0}};
    refused<TensorMismatchError>(mixed, "tensor 'blk.0.ffn_down_exps.weight': expected Q8_0 like "
                                        "'blk.0.ffn_gate_exps.weight' (a layer's expert weights share one type), got "
                                        "Q4_0 (type 2)");
    Edit quantized_and_float;
    quantized_and_float.type = {{"ffn_up_exps.weight", GgmlType::F32}};
    refused<TensorMismatchError>(quantized_and_float,
                                 "tensor 'blk.0.ffn_up_exps.weight': expected Q8_0 like 'blk.0.ffn_gate_exps.weight' (a "
                                 "layer's expert weights share one type), got F32 (type 0)");
    Edit float_then_quantized;
    float_then_quantized.type = {{"ffn_gate_exps.weight", GgmlType::BF16}};
    refused<TensorMismatchError>(float_then_quantized,
                                 "tensor 'blk.0.ffn_up_exps.weight': expected BF16 like 'blk.0.ffn_gate_exps.weight' (a "
                                 "layer's expert weights share one type, or mix F32, F16, BF16), got Q8_0 (type 8)");
    Edit unsupported;
    unsupported.type = {{"ffn_gate_exps.weight", GgmlType::Q6_K}, {"ffn_up_exps.weight", GgmlType::Q6_K},
                        {"ffn_down_exps.weight", GgmlType::Q6_K}};
    refused<TensorMismatchError>(unsupported, "tensor 'blk.0.ffn_gate_exps.weight': expected an expert weight type "
                                              "F32, F16, BF16 (a float layer) or Q8_0, Q4_0, Q4_K (a quantized layer), "
                                              "got Q6_K (type 14)");
    Edit one_unsupported;
    one_unsupported.type = {{"ffn_down_exps.weight", GgmlType::Q5_K}};
    refused<TensorMismatchError>(one_unsupported, "tensor 'blk.0.ffn_down_exps.weight': expected an expert weight "
                                                  "type F32, F16, BF16 (a float layer) or Q8_0, Q4_0, Q4_K (a quantized "
                                                  "layer), got Q5_K (type 13)");
    Edit router;
    router.type = {{"ffn_gate_inp.weight", GgmlType::I32}};
    refused<TensorMismatchError>(router, "tensor 'blk.0.ffn_gate_inp.weight': expected a type read as float (F32, "
                                         "F16, BF16, Q8_0, Q4_0, Q4_K), got I32 (type 26)");
    // F32, F16 and BF16 read exactly as float: a mix of them is one float layer.
    Edit floats;
    floats.type = {{"ffn_gate_exps.weight", GgmlType::F16}, {"ffn_up_exps.weight", GgmlType::BF16},
                   {"ffn_down_exps.weight", GgmlType::F32}};
    const auto f = edited_file(floats);
    CHECK(moe::io::describe_gguf_layer(f, 0).expert_type == GgmlType::F16);
    moe::io::visit_gguf_layer(f, 0, [](auto& layer) {
      CHECK(std::is_same_v<std::decay_t<decltype(layer)>, moe::MixtralMoE<float>>);
    });
  }
  SECTION("shapes") {
    Edit ff;
    ff.ne = {{"ffn_gate_exps.weight", {256, 128, 4}}};
    refused<TensorMismatchError>(ff, "tensor 'blk.0.ffn_gate_exps.weight': expected ne [256, 256, 4] ([d_model, d_ff, "
                                     "num_experts] from llama.embedding_length, llama.feed_forward_length, "
                                     "llama.expert_count), got ne [256, 128, 4]");
    Edit experts;
    experts.ne = {{"ffn_down_exps.weight", {256, 256, 3}}};
    refused<TensorMismatchError>(experts, "tensor 'blk.0.ffn_down_exps.weight': expected ne [256, 256, 4] ([d_ff, "
                                          "d_model, num_experts] from llama.embedding_length, "
                                          "llama.feed_forward_length, llama.expert_count), got ne [256, 256, 3]");
    Edit router;
    router.ne = {{"ffn_gate_inp.weight", {256, 5}}};
    refused<TensorMismatchError>(router, "tensor 'blk.0.ffn_gate_inp.weight': expected ne [256, 4] ([d_model, "
                                         "num_experts] from llama.embedding_length, llama.feed_forward_length, "
                                         "llama.expert_count), got ne [256, 5]");
    Edit d;
    d.u32 = {{"embedding_length", 512}};
    refused<TensorMismatchError>(d, "tensor 'blk.0.ffn_gate_inp.weight': expected ne [512, 4] ([d_model, "
                                    "num_experts] from llama.embedding_length, llama.feed_forward_length, "
                                    "llama.expert_count), got ne [256, 4]");
  }
  SECTION("missing tensors") {
    Edit up;
    up.drop = {"ffn_up_exps.weight"};
    refused<MissingTensorError>(up, "tensor 'blk.0.ffn_up_exps.weight': expected a tensor of this name, got none "
                                    "among the file's 3 tensors; close names: 'blk.0.ffn_down_exps.weight', "
                                    "'blk.0.ffn_gate_exps.weight'");
    Edit router;
    router.drop = {"ffn_gate_inp.weight"};
    refused<MissingTensorError>(router, "tensor 'blk.0.ffn_gate_inp.weight': expected a tensor of this name, got "
                                        "none among the file's 3 tensors; close names: 'blk.0.ffn_gate_exps.weight'");
    try {
      (void)moe::io::describe_gguf_layer(edited_file(up), 0);
    } catch (const MissingTensorError& e) {
      CHECK(e.tensor() == "blk.0.ffn_up_exps.weight");
    }
  }
  SECTION("metadata") {
    Edit used;
    used.drop = {"llama.expert_used_count"};
    refused<MissingMetadataError>(used, "metadata 'llama.expert_used_count': expected a key of this name, got none "
                                        "among the file's 4 keys; close names: 'llama.expert_count'");
    Edit arch;
    arch.drop = {"general.architecture"};
    refused<MissingMetadataError>(arch, "metadata 'general.architecture': expected a key of this name, got none among "
                                        "the file's 4 keys");
    Edit ff;
    ff.drop = {"llama.feed_forward_length"};
    refused<MissingMetadataError>(ff, "metadata 'llama.expert_feed_forward_length': expected a key of this name or "
                                      "'llama.feed_forward_length' (the experts' width), got none among the file's 4 "
                                      "keys");
    Edit dense;
    dense.u32 = {{"expert_count", 0}};
    refused<MetadataError>(dense, "metadata 'llama.expert_count': expected a value >= 1 (an MoE model), got 0 (a dense "
                                  "llama model)");
    Edit top_k;
    top_k.u32 = {{"expert_used_count", 5}};
    refused<MetadataError>(top_k, "metadata 'llama.expert_used_count': expected a value in [1, 4] (at most "
                                  "expert_count), got 5");
    Edit blocks;
    blocks.u32 = {{"block_count", 0}};
    refused<MetadataError>(blocks, "metadata 'llama.block_count': expected more than 0 blocks (block 0 asked for), got "
                                   "u32 0");
    Edit other;
    other.arch = "qwen3moe";
    refused<MetadataError>(other, "metadata 'general.architecture': expected an MoE architecture of 'llama' (Mixtral), "
                                  "'olmoe', 'qwen2moe', 'deepseek2' (DeepSeek-V3) or 'gpt-oss', got 'qwen3moe'");
    // A key of the wrong type: the reader's own refusal.
    GgufWriter w;
    w.set("general.architecture", std::uint32_t{1});
    const auto f = GgufFile::from_bytes(w.to_bytes(), "edit.gguf");
    require_error<MetadataError>([&] { (void)moe::io::describe_gguf_layer(f, 0); },
                                 "moe::io: file 'edit.gguf': metadata 'general.architecture': expected a value of type "
                                 "string, got u32");
  }
  SECTION("DeepSeek-V3") {
    const Edit good = deepseek_edit();
    const auto layer = moe::io::load_gguf_layer<moe::QuantizedDeepSeekV3MoE<BlockQ8_0>>(edited_file(good), 0);
    CHECK(layer.router().gating().n_group == 4);
    CHECK(layer.router().gating().topk_group == 2);
    CHECK(layer.router().gating().routed_scaling_factor == 1.0f);  // no expert_weights_scale
    CHECK_FALSE(layer.router().gating().renormalize);               // no expert_weights_norm
    CHECK(layer.router().gating().correction_bias.size() == 8);
    CHECK(layer.combiner().shared_expert().d_ff() == 256);
    Edit no_gating = good;
    no_gating.drop.insert("deepseek2.expert_gating_func");
    refused<MissingMetadataError>(no_gating, "metadata 'deepseek2.expert_gating_func': expected a key of this name, 2 "
                                             "(sigmoid: DeepSeek-V3), got none (llama.cpp then takes softmax, "
                                             "DeepSeek-V2's gating, which DeepSeekV3MoE does not implement)");
    Edit softmax = good;
    softmax.u32["expert_gating_func"] = 1;
    refused<MetadataError>(softmax, "metadata 'deepseek2.expert_gating_func': expected 2 (sigmoid: DeepSeek-V3's "
                                    "gating, the one DeepSeekV3MoE implements), got u32 1 (softmax: DeepSeek-V2)");
    Edit dense = good;
    dense.u32["leading_dense_block_count"] = 1;
    refused<MetadataError>(dense, "metadata 'deepseek2.leading_dense_block_count': expected at most 0 (block 0 asked "
                                  "for: the leading blocks are dense, without experts), got u32 1");
    Edit groups = good;
    groups.u32["expert_group_count"] = 3;
    refused<MetadataError>(groups, "metadata 'deepseek2.expert_group_count': expected a divisor of expert_count = 8, "
                                   "got 3");
    Edit shared = good;
    shared.u32["expert_shared_count"] = 2;
    refused<TensorMismatchError>(shared, "tensor 'blk.0.ffn_gate_shexp.weight': expected ne [256, 512] ([d_model, "
                                         "shared d_ff] from deepseek2.embedding_length, "
                                         "deepseek2.expert_feed_forward_length x deepseek2.expert_shared_count), got ne "
                                         "[256, 256]");
    Edit no_shared = good;
    no_shared.drop.insert("ffn_down_shexp.weight");
    refused<MissingTensorError>(no_shared, "tensor 'blk.0.ffn_down_shexp.weight': expected a tensor of this name, got "
                                           "none among the file's 7 tensors; close names: "
                                           "'blk.0.ffn_down_exps.weight', 'blk.0.ffn_gate_shexp.weight', "
                                           "'blk.0.ffn_up_shexp.weight'");
  }
}

TEST_CASE("save_gguf_layer refuses what a GGUF file or llama.cpp's graph cannot hold", "[io][gguf]") {
  using namespace gguf_loader_test;
  using moe::test::require_invalid;
  GgufWriter w;
  require_invalid([&] { moe::io::save_gguf_layer(w, qwen2_moe(41), 0, GgufFamily::mixtral); },
                  {"moe::io::save_gguf_layer(): family expected one this layer type is, got mixtral"});
  require_invalid([&] { moe::io::save_gguf_layer(w, mixtral(42, false), 0, GgufFamily::mixtral); },
                  {"moe::io::save_gguf_layer(): router renormalize expected true (llama.cpp's llama graph always "
                   "renormalises; save as GgufFamily::olmoe to keep false), got false"});
  auto biased = mixtral(43);
  biased.router().bias() = moe::Vector<float>::Ones(4);
  require_invalid([&] { moe::io::save_gguf_layer(w, biased, 0, GgufFamily::mixtral); },
                  {"moe::io::save_gguf_layer(): router bias expected none (llama.cpp's graph for this family has no "
                   "router bias), got a bias of length 4"});
  require_invalid(
      [&] { moe::io::save_gguf_layer(w, moe::quantize_layer<BlockQ8_0>(mixtral(44)), 0, GgufFamily::mixtral, {GgmlType::Q4_0}); },
      {"moe::io::save_gguf_layer(): options.expert_type expected Q8_0, the layer's blocks (no requantization), got Q4_0"});
  require_invalid([&] { moe::io::save_gguf_layer(w, mixtral(45), 0, GgufFamily::mixtral, {GgmlType::Q6_K}); },
                  {"moe::io::save_gguf_layer(): options.expert_type expected F32, F16, BF16, Q8_0, Q4_0 or Q4_K, got Q6_K"});
  require_invalid([&] { moe::io::save_gguf_layer(w, mixtral(46), -1, GgufFamily::mixtral); },
                  {"moe::io::save_gguf_layer(): block expected >= 0, got -1"});
  {
    moe::SwiGLUExperts<float> bank(2, 48, 64);
    const moe::MixtralMoE<float> small(std::move(bank), moe::SoftmaxTopKRouter<float>(2, 48, 1));
    require_invalid([&] { moe::io::save_gguf_layer(w, moe::quantize_layer<BlockQ8_0>(small), 0, GgufFamily::mixtral); },
                    {"moe::io::save_gguf_layer(): experts d_model expected a multiple of 32 (the block of Q8_0: a GGUF "
                     "row is whole blocks), got 48"});
  }
  {
    auto ds = deepseek_v3(47);
    auto odd = moe::DeepSeekV3MoE<float>(ds.experts(), ds.router(),
                                         moe::SharedExpertCombiner<moe::SwiGLUExperts<float>, moe::SharedGate::none>(
                                             moe::SwiGLUExperts<float>(1, kD, 384)));
    require_invalid([&] { moe::io::save_gguf_layer(w, odd, 0, GgufFamily::deepseek_v3); },
                    {"moe::io::save_gguf_layer(): shared expert d_ff expected a multiple of d_ff = 256 (llama.cpp sizes "
                     "DeepSeek's shared experts as expert_shared_count x d_ff), got 384"});
  }
  {
    auto g = gpt_oss(48);
    moe::GptOssExperts<float> other(4, kD, kFF, 1.5f, 7.0f);
    const moe::GptOssMoE<float> layer(std::move(other), g.router());
    require_invalid([&] { moe::io::save_gguf_layer(w, layer, 0, GgufFamily::gpt_oss); },
                    {"moe::io::save_gguf_layer(): GPT-OSS alpha and limit expected 1.702 and 7 (llama.cpp's, which "
                     "GGUF does not store), got 1.5 and 7"});
  }
  // Nothing was added by the refused calls; the block saved twice is the writer's own refusal.
  CHECK(w.to_bytes().size() == GgufWriter().to_bytes().size());
  moe::io::save_gguf_layer(w, mixtral(49), 0, GgufFamily::mixtral);
  require_invalid([&] { moe::io::save_gguf_layer(w, mixtral(49), 0, GgufFamily::mixtral); },
                  {"GgufWriter::add_tensor(): tensor name expected a name not added before, got "
                   "'blk.0.ffn_gate_inp.weight' again"});
}

TEST_CASE("save_gguf_layer to a path: a file llama.cpp's layout, loaded back", "[io][gguf]") {
  using namespace gguf_loader_test;
  const auto q = moe::quantize_layer<BlockQ4_K>(qwen2_moe(51));
  const moe::test::TempDir dir("gguf_loader");
  moe::io::save_gguf_layer(dir.path() / "qwen.gguf", q, 3, GgufFamily::qwen2_moe);
  {
    const auto file = GgufFile::open(dir.path() / "qwen.gguf");
    const auto info = moe::io::describe_gguf_layer(file, 3);
    CHECK(info.family == GgufFamily::qwen2_moe);
    CHECK(info.shared_d_ff == 2 * kFF);
    CHECK(info.find("shared expert gate")->ne == std::vector<std::int64_t>{kD});
    CHECK(file.get<std::uint32_t>("qwen2moe.expert_shared_feed_forward_length") == 2 * kFF);
    CHECK_FALSE(file.get<bool>("qwen2moe.expert_weights_norm"));
    const auto loaded = moe::io::load_gguf_layer<moe::QuantizedQwen2MoE<BlockQ4_K>>(file, 3);
    CHECK(same_blocks(loaded.combiner().shared_expert(), q.combiner().shared_expert()));
    CHECK(loaded.combiner().gate_weight() == q.combiner().gate_weight());
  }
}

TEST_CASE("GGUF loader: corrupted layer files load or end in a documented exception", "[io][gguf]") {
  using namespace gguf_loader_test;
  // Small layers (d 32, ff 32, 4 experts) of the families with the most metadata and tensors;
  // bytes flipped anywhere (header, metadata, tensor infos, data). Each file either loads and
  // runs, or ends in moe::io::Error or std::invalid_argument: nothing else escapes, nothing
  // reads out of bounds (the sanitizer builds run this too).
  std::mt19937 rng(61);
  moe::SigmoidGroupLimited<float> g;
  g.n_group = 2;
  g.topk_group = 1;
  g.routed_scaling_factor = 2.0f;
  g.correction_bias = random_matrix<float>(4, 1, rng).col(0);
  const auto small_bank = [&](Index E) {
    moe::SwiGLUExperts<float> b(E, 32, 32);
    b.gate_up() = random_matrix<float>(E * 64, 32, rng) * 0.1f;
    b.down() = random_matrix<float>(E * 32, 32, rng) * 0.1f;
    return b;
  };
  const moe::DeepSeekV3MoE<float> ds(small_bank(4), moe::GroupLimitedRouter<float>(random_matrix<float>(4, 32, rng), 2, g),
                                     moe::SharedExpertCombiner<moe::SwiGLUExperts<float>, moe::SharedGate::none>(small_bank(1)));
  moe::GptOssExperts<float> gx(4, 32, 32);
  gx.gate_up() = random_matrix<float>(4 * 32, 64, rng) * 0.1f;
  gx.down() = random_matrix<float>(4 * 32, 32, rng) * 0.1f;
  const moe::GptOssMoE<float> go(std::move(gx), moe::TopKSoftmaxRouter<float>(random_matrix<float>(4, 32, rng), 2, {},
                                                                               random_matrix<float>(4, 1, rng).col(0)));
  std::vector<std::vector<std::byte>> files;
  for (int i = 0; i < 2; ++i) {
    GgufWriter w;
    if (i == 0) moe::io::save_gguf_layer(w, moe::quantize_layer<BlockQ8_0>(ds), 0, GgufFamily::deepseek_v3);
    else moe::io::save_gguf_layer(w, go, 0, GgufFamily::gpt_oss, {.expert_type = GgmlType::F16});
    files.push_back(w.to_bytes());
  }
  const RowMatrix<float> x = random_matrix<float>(3, 32, rng);
  int loaded = 0, refused = 0;
  for (int trial = 0; trial < 600; ++trial) {
    std::vector<std::byte> bytes = files[static_cast<std::size_t>(trial % 2)];
    const auto header = GgufFile::from_bytes(bytes, "corrupt.gguf").data_offset();
    std::uniform_int_distribution<std::size_t> where(0, trial % 3 == 0 ? bytes.size() - 1 : header - 1);
    std::uniform_int_distribution<int> value(0, 255), flips(1, 4);
    for (int k = flips(rng); k > 0; --k) bytes[where(rng)] = static_cast<std::byte>(value(rng));
    try {
      const auto f = GgufFile::from_bytes(std::move(bytes), "corrupt.gguf");
      moe::io::visit_gguf_layer(f, 0, [&](auto& layer) { (void)run(layer, x); });
      ++loaded;
    } catch (const moe::io::Error&) {
      ++refused;
    } catch (const std::invalid_argument&) {
      ++refused;
    }
  }
  INFO(loaded << " loaded, " << refused << " refused");
  CHECK(loaded > 0);
  CHECK(refused > 0);
}
