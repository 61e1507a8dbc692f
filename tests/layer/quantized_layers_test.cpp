// quantize_layer and the quantized family aliases: the golden layers of ../shared/golden with
// their experts quantized at load stay within each type's measured bound of the float64
// outputs; shared experts are quantized too, the router and the shared gate copied.
#include <catch2/catch.hpp>

#include "support/golden.hpp"
#include "support/random.hpp"

#include <moe/io/hf_loader.hpp>
#include <moe/io/switch_loader.hpp>
#include <moe/layer/quantized_layers.hpp>
#include <moe/layer/workspace.hpp>
#include <moe/moe.hpp>

#include <cstring>
#include <string>

namespace {

using moe::Index;
using moe::RowMatrix;
using moe::kernels::BlockQ4_0;
using moe::kernels::BlockQ4_K;
using moe::kernels::BlockQ8_0;
using moe::test::meta;

Index quant_meta_index(const moe::io::SafetensorsFile& f, const std::string& key) { return std::stoll(meta(f, key)); }
bool quant_meta_bool(const moe::io::SafetensorsFile& f, const std::string& key) { return meta(f, key) == "true"; }

/// The documented bound (docs/quantization.md#quantized-expert-banks) of a golden layer's
/// output, quantized at load, against the float64 expected output: max |y - want| / max |want|.
template <class Block>
constexpr double quant_golden_bound() {
  // Measured over the six families (2-core Zen 5; the errors do not depend on the path, which
  // computes the same bits everywhere): Q8_0 0.0099-0.0189, Q4_0 0.114-0.185, Q4_K 0.077-0.136.
  if constexpr (std::is_same_v<Block, BlockQ8_0>) return 0.025;
  if constexpr (std::is_same_v<Block, BlockQ4_0>) return 0.25;
  return 0.18;
}

/// Runs a float layer's quantized twin on the golden input; the error against expected.output.
template <class Block, class Layer>
double quant_golden_error(const Layer& layer, const moe::io::SafetensorsFile& f) {
  const auto q = moe::quantize_layer<Block>(layer);
  const RowMatrix<float> x = f.read_rows<float>("input", -1, q.input_dim());
  moe::Workspace<float> ws;
  const RowMatrix<float> y = q.forward(x, ws);
  const auto expected = f.read<double>("expected.output");
  const Eigen::Map<const RowMatrix<double>> want(expected.data(), y.rows(), y.cols());
  return moe::test::max_relative_error(y, want);
}

template <class Block>
void quant_check_golden_families() {
  const auto open = [](const char* name) {
    return moe::io::SafetensorsFile::open(moe::test::golden_dir() / (std::string(name) + ".safetensors"));
  };
  const auto report = [](const char* name, double err) {
    INFO(moe::kernels::quant_format<Block>::name << " " << name << ": max relative error " << err);
    WARN(moe::kernels::quant_format<Block>::name << " " << name << ": " << err);
    CHECK(err < quant_golden_bound<Block>());
    CHECK(err > 1e-5);  // the quantized products ran (float alone is within 1e-5)
  };
  {
    const auto f = open("mixtral_top2");
    report("mixtral_top2", quant_golden_error<Block>(moe::io::load_mixtral<float>(f, meta(f, "prefix"), {quant_meta_index(f, "top_k")}), f));
  }
  {
    const auto f = open("olmoe_top8");
    report("olmoe_top8", quant_golden_error<Block>(moe::io::load_olmoe<float>(f, meta(f, "prefix"),
                                                                        {quant_meta_index(f, "top_k"), quant_meta_bool(f, "renormalize")}),
                                             f));
  }
  {
    const auto f = open("qwen2moe_top4_shared");
    report("qwen2moe_top4_shared",
           quant_golden_error<Block>(moe::io::load_qwen2_moe<float>(f, meta(f, "prefix"),
                                                              {quant_meta_index(f, "top_k"), quant_meta_bool(f, "renormalize")}),
                               f));
  }
  {
    const auto f = open("deepseekv3_group_limited");
    moe::io::DeepSeekV3Config c;
    c.top_k = quant_meta_index(f, "top_k");
    c.n_group = quant_meta_index(f, "n_group");
    c.topk_group = quant_meta_index(f, "topk_group");
    c.routed_scaling_factor = std::stod(meta(f, "routed_scaling_factor"));
    c.norm_topk_prob = quant_meta_bool(f, "renormalize");
    report("deepseekv3_group_limited", quant_golden_error<Block>(moe::io::load_deepseek_v3<float>(f, meta(f, "prefix"), c), f));
  }
  {
    const auto f = open("gptoss_top2");
    report("gptoss_top2", quant_golden_error<Block>(moe::io::load_gpt_oss<float>(f, meta(f, "prefix"), {quant_meta_index(f, "top_k")}), f));
  }
  {
    const auto f = open("switch_top1");
    report("switch_top1", quant_golden_error<Block>(moe::io::load_switch_transformers<float>(f, meta(f, "prefix"), {}), f));
  }
}

}  // namespace

TEMPLATE_TEST_CASE("golden layers quantized at load stay within their type's bound", "[layer][quant][golden]",
                   BlockQ8_0, BlockQ4_0, BlockQ4_K) {
  quant_check_golden_families<TestType>();
}

namespace {
template <class L>
constexpr bool quant_layer_quantizable = requires(const L& l) { moe::quantize_layer<BlockQ8_0>(l); };
}  // namespace

TEST_CASE("quantize_layer: which layers it takes, shared experts and the router copied", "[layer][quant]") {
  // Banks quantize_experts knows (SwiGLU, GPT-OSS, FFN; shared SwiGLU experts) and no others.
  STATIC_REQUIRE(quant_layer_quantizable<moe::MixtralMoE<float>>);
  STATIC_REQUIRE(quant_layer_quantizable<moe::Qwen2MoE<float>>);
  STATIC_REQUIRE(quant_layer_quantizable<moe::DeepSeekV3MoE<float>>);
  STATIC_REQUIRE(quant_layer_quantizable<moe::GptOssMoE<float>>);
  STATIC_REQUIRE(quant_layer_quantizable<moe::SwitchMoE<float>>);
  STATIC_REQUIRE_FALSE(quant_layer_quantizable<moe::LowRankMoE<float>>);
  STATIC_REQUIRE_FALSE(quant_layer_quantizable<moe::ConvMoE<float>>);
  STATIC_REQUIRE_FALSE(quant_layer_quantizable<moe::MixtralMoE<double>>);

  std::mt19937 rng(41);
  moe::SwiGLUExperts<float> routed(4, 64, 96), shared(1, 64, 128);
  routed.gate_up() = moe::test::random_matrix<float>(4 * 192, 64, rng) * 0.1f;
  routed.down() = moe::test::random_matrix<float>(4 * 64, 96, rng) * 0.1f;
  shared.gate_up() = moe::test::random_matrix<float>(256, 64, rng) * 0.1f;
  shared.down() = moe::test::random_matrix<float>(64, 128, rng) * 0.1f;
  moe::SoftmaxTopKRouter<float> router(4, 64, 2);
  router.weight() = moe::test::random_matrix<float>(4, 64, rng);
  moe::SharedExpertCombiner<moe::SwiGLUExperts<float>, moe::SharedGate::sigmoid> combiner(shared);
  combiner.gate_weight() = moe::test::random_matrix<float>(64, 1, rng);
  const moe::Qwen2MoE<float> layer(routed, router, combiner);
  const auto q = moe::quantize_layer<BlockQ4_0>(layer);
  STATIC_REQUIRE(std::is_same_v<std::remove_const_t<decltype(q)>, moe::QuantizedQwen2MoE<BlockQ4_0>>);
  const auto shared_q = moe::quantize_experts<BlockQ4_0>(shared);
  const auto blocks = q.combiner().shared_expert().gate_up(0).to_blocks();
  const auto want = shared_q.gate_up(0).to_blocks();
  CHECK(std::memcmp(blocks.data(), want.data(), blocks.size() * sizeof(BlockQ4_0)) == 0);
  CHECK(q.combiner().gate_weight() == combiner.gate_weight());
  CHECK(q.router().weight() == router.weight());

  // It runs (the products' bits are pinned in tests/expert/quantized_experts_test.cpp).
  const RowMatrix<float> x = moe::test::random_matrix<float>(33, 64, rng);
  moe::Workspace<float> ws;
  const RowMatrix<float> y = q.forward(x, ws);
  CHECK(moe::test::max_relative_error(y, layer.forward(x, ws)) < 0.25);
}
