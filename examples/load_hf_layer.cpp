// load_hf_layer: load one MoE layer from a safetensors file under its Hugging Face names,
// run it on the file's input, and compare with the file's expected output.
//
//   ./load_hf_layer FILE.safetensors
//
// The file is a golden case (../shared/golden): its __metadata__ names the family, the prefix
// and the router settings a checkpoint alone does not hold (top_k, norm_topk_prob, ...).
// Exit status: 0 when the max relative error is below 1e-5, 1 when it is not, 2 when the
// file is malformed, unsupported or cannot be read.
#include <moe/io/hf_loader.hpp>
#include <moe/io/routing_loaders.hpp>
#include <moe/io/soft_moe_loader.hpp>
#include <moe/io/switch_loader.hpp>

#include <cstdio>
#include <exception>
#include <cstdint>
#include <string>
#include <vector>

namespace {

std::string meta(const moe::io::SafetensorsFile& f, const std::string& key) {
  auto v = f.metadata(key);
  if (!v) throw std::runtime_error("the file's __metadata__ has no '" + key + "' (is it a golden case?)");
  return *v;
}

template <class Layer>
moe::RowMatrix<float> run(const Layer& layer, const moe::io::SafetensorsFile& f, const moe::ForwardContext& ctx = {}) {
  const moe::RowMatrix<float> x = f.read_rows<float>("input", -1, layer.input_dim());
  moe::Workspace<float> ws;
  return layer.forward(x, ws, ctx);
}

/// "B x S x d" -> S, the sequence length (Soft MoE mixes tokens within a sequence).
moe::Index sequence_length(const std::string& shape) {
  const auto first = shape.find('x');
  const auto second = shape.find('x', first + 1);
  if (first == std::string::npos || second == std::string::npos)
    throw std::runtime_error("metadata input_shape is not 'B x S x d': " + shape);
  return std::stol(shape.substr(first + 1, second - first - 1));
}

/// Switch metadata: "capacity" is "unbounded" or a count; "priority" names the policy.
moe::Capacity switch_capacity(const moe::io::SafetensorsFile& f) {
  const std::string c = meta(f, "capacity");
  if (c == "unbounded") return moe::Capacity::unlimited();
  const std::string p = meta(f, "priority");
  const auto priority = p.find("batch prioritized") != std::string::npos ? moe::Priority::batch_prioritized
                                                                          : moe::Priority::position;
  return moe::Capacity::fixed(std::stol(c), priority);
}

moe::RowMatrix<float> run_file(const moe::io::SafetensorsFile& f, std::string& family) {
  family = meta(f, "family");
  const std::string prefix = meta(f, "prefix");
  const auto top_k = [&] { return std::stol(meta(f, "top_k")); };
  const auto renormalize = [&] { return meta(f, "renormalize") == "true"; };
  if (family == "mixtral") return run(moe::io::load_mixtral<float>(f, prefix, {top_k()}), f);
  if (family == "olmoe") return run(moe::io::load_olmoe<float>(f, prefix, {top_k(), renormalize()}), f);
  if (family == "qwen2_moe") return run(moe::io::load_qwen2_moe<float>(f, prefix, {top_k(), renormalize()}), f);
  if (family == "gpt_oss") return run(moe::io::load_gpt_oss<float>(f, prefix, {top_k()}), f);
  if (family == "deepseek_v3") {
    moe::io::DeepSeekV3Config c;
    c.top_k = top_k();
    c.n_group = std::stol(meta(f, "n_group"));
    c.topk_group = std::stol(meta(f, "topk_group"));
    c.routed_scaling_factor = std::stod(meta(f, "routed_scaling_factor"));
    c.norm_topk_prob = renormalize();
    return run(moe::io::load_deepseek_v3<float>(f, prefix, c), f);
  }
  if (family == "switch_transformers")
    return run(moe::io::load_switch_transformers<float>(f, prefix, {switch_capacity(f)}), f);
  if (family == "puigcerver2023") {
    moe::ForwardContext ctx;
    ctx.sequence_length = sequence_length(meta(f, "input_shape"));
    return run(moe::io::load_soft_moe<float>(f, prefix, {std::stol(meta(f, "slots_per_expert"))}), f, ctx);
  }
  if (family == "zhou2022")
    return run(moe::io::load_expert_choice<float>(f, prefix, {std::stod(meta(f, "capacity_factor"))}), f);
  if (family == "roller2021") {
    const std::vector<std::int64_t> ids = f.read<std::int64_t>("token_ids");
    moe::ForwardContext ctx;
    ctx.token_ids = ids;
    return run(moe::io::load_hash<float>(f, prefix), f, ctx);
  }
  if (family == "shazeer2017") {
    // Training mode with the file's standard-normal sample: the noisy logits are the rule.
    auto layer = moe::io::load_noisy_top_k<float>(f, prefix, {top_k()});
    const moe::RowMatrix<float> x = f.read_rows<float>("input", -1, layer.input_dim());
    layer.router().set_noise(f.read_rows<float>("noise", x.rows(), layer.num_experts()));
    moe::ForwardContext ctx;
    ctx.mode = moe::Mode::training;
    return run(layer, f, ctx);
  }
  throw std::runtime_error("unsupported layer family '" + family +
                           "' (supported: mixtral, olmoe, qwen2_moe, deepseek_v3, gpt_oss, switch_transformers, "
                           "puigcerver2023, zhou2022, roller2021, shazeer2017)");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s FILE.safetensors\n", argv[0]);
    return 2;
  }
  try {
    const auto f = moe::io::SafetensorsFile::open(argv[1]);
    std::string family;
    const moe::RowMatrix<float> y = run_file(f, family);
    const moe::RowMatrix<double> expected = f.read_rows<double>("expected.output", y.rows(), y.cols());
    const double scale = expected.cwiseAbs().maxCoeff();
    const double err = (y.cast<double>() - expected).cwiseAbs().maxCoeff() / (scale > 0 ? scale : 1.0);
    const bool ok = err < 1e-5;
    std::printf("%s: family %s, %ld tokens x %ld, max relative error %.1e (float32; %s 1e-5)\n",
                meta(f, "case").c_str(), family.c_str(), long(y.rows()), long(y.cols()), err, ok ? "below" : "NOT below");
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "load_hf_layer: %s\n", e.what());
    return 2;
  }
}
