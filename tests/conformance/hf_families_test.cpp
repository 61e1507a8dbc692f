// Runners for the families of transformers' MoE blocks: Mixtral, OLMoE, Qwen2-MoE,
// DeepSeek-V3, GPT-OSS, each loaded through moe::io under its Hugging Face names.
#include <moe/io/hf_loader.hpp>

#include "conformance/golden_runner.hpp"

namespace {

using moe::io::SafetensorsFile;
using namespace moe::test;

/// Forward quantities, then every gradient.
template <class Layer>
GoldenRun run_with_backward(const Layer& layer, const SafetensorsFile& f) {
  GoldenRun r = run_routed_layer(layer, f);
  run_layer_backward(layer, f, r);
  return r;
}

template <class S>
GoldenRun run_mixtral(const SafetensorsFile& f) {
  if (!meta_bool(f, "renormalize")) throw std::runtime_error("Mixtral always renormalises; the case says otherwise");
  return run_with_backward(moe::io::load_mixtral<S>(f, meta(f, "prefix"), {meta_index(f, "top_k")}), f);
}

template <class S>
GoldenRun run_olmoe(const SafetensorsFile& f) {
  return run_with_backward(
      moe::io::load_olmoe<S>(f, meta(f, "prefix"), {meta_index(f, "top_k"), meta_bool(f, "renormalize")}), f);
}

template <class S>
GoldenRun run_qwen2_moe(const SafetensorsFile& f) {
  return run_with_backward(
      moe::io::load_qwen2_moe<S>(f, meta(f, "prefix"), {meta_index(f, "top_k"), meta_bool(f, "renormalize")}), f);
}

template <class S>
GoldenRun run_deepseek_v3(const SafetensorsFile& f) {
  moe::io::DeepSeekV3Config c;
  c.top_k = meta_index(f, "top_k");
  c.n_group = meta_index(f, "n_group");
  c.topk_group = meta_index(f, "topk_group");
  c.routed_scaling_factor = meta_double(f, "routed_scaling_factor");
  c.norm_topk_prob = meta_bool(f, "renormalize");
  return run_with_backward(moe::io::load_deepseek_v3<S>(f, meta(f, "prefix"), c), f);
}

template <class S>
GoldenRun run_gpt_oss(const SafetensorsFile& f) {
  return run_with_backward(moe::io::load_gpt_oss<S>(f, meta(f, "prefix"), {meta_index(f, "top_k")}), f);
}

const bool hf_families_registered = register_family("mixtral", {run_mixtral<float>, run_mixtral<double>}) &&
                        register_family("olmoe", {run_olmoe<float>, run_olmoe<double>}) &&
                        register_family("qwen2_moe", {run_qwen2_moe<float>, run_qwen2_moe<double>}) &&
                        register_family("deepseek_v3", {run_deepseek_v3<float>, run_deepseek_v3<double>}) &&
                        register_family("gpt_oss", {run_gpt_oss<float>, run_gpt_oss<double>});

}  // namespace
