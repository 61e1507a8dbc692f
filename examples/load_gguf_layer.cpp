// load_gguf_layer: run one MoE layer of a GGUF model (llama.cpp's file format) with this library.
//
//   load_gguf_layer MODEL.gguf [--layer N] [--reference REF.safetensors] [--tokens T] [--bound B]
//   load_gguf_layer --write-demo OUT.gguf [--type f32|f16|bf16|q8_0|q4_0|q4_k] [--family F]
//
// The first form loads block N's MoE layer (Mixtral, OLMoE, Qwen2-MoE, DeepSeek-V3 or GPT-OSS;
// F32, F16, BF16, Q8_0, Q4_0 or Q4_K experts; docs/gguf.md#loading-moe-layers), prints what the
// file holds, runs the layer on T random tokens (default 64) or on the reference file's `input`
// [T, d] (float32), and prints the tokens each expert took. With a reference, it compares the
// output with the file's `expected.output` [T, d] (float32 or float64): the max relative error
// max |y - ref| / max |ref| must stay within B, by default the documented bound for the
// experts' type against the float64 layer of the same weights (gguf_layer_error_bound,
// docs/quantization.md#quantized-expert-banks; a reference from the unquantized model differs
// by the weights' own quantization error: pass --bound).
//
// The second form writes a small demo model: one layer (block 0) of the family F (default
// mixtral: 8 experts, top-2, d 256, ff 256) with random weights, its experts of the type asked
// for (default q4_k), saved by moe::io::save_gguf_layer; beside it OUT's stem +
// ".reference.safetensors", 64 random tokens and the float64 layer's output on them (the same
// file read with its weights dequantized, visit_gguf_layer_as<double>); then it runs the first
// form on the two. CI runs it (examples/ci-run.txt), so it needs no model download.
//
// Exit status: 0 when the layer ran (and the error is within the bound), 1 when the error
// exceeds it, 2 for a malformed or unsupported file, a missing file or a bad argument.
#include <moe/io/gguf_loader.hpp>
#include <moe/io/safetensors.hpp>
#include <moe/layer/quantized_layers.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

using moe::Index;
using moe::RowMatrix;
using moe::io::GgmlType;
using moe::io::GgufFamily;

struct Args {
  std::string model;
  Index layer = 0;
  std::optional<std::string> reference;
  Index tokens = 64;
  std::optional<double> bound;
  std::optional<std::string> write_demo;
  std::string type = "q4_k";
  std::string family = "mixtral";
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "load_gguf_layer: %s\n"
               "usage: load_gguf_layer MODEL.gguf [--layer N] [--reference REF.safetensors] [--tokens T] [--bound B]\n"
               "       load_gguf_layer --write-demo OUT.gguf [--type f32|f16|bf16|q8_0|q4_0|q4_k] "
               "[--family mixtral|olmoe|qwen2_moe|deepseek_v3|gpt_oss]\n",
               why);
  std::exit(2);
}

Index to_index(const std::string& flag, const std::string& v, Index lo) {
  std::size_t used = 0;
  long long n = 0;
  try {
    n = std::stoll(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != v.size() || n < lo) usage((flag + " expects an integer >= " + std::to_string(lo) + ", got '" + v + "'").c_str());
  return static_cast<Index>(n);
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage((arg + " needs a value").c_str());
      return argv[++i];
    };
    if (arg == "--layer") a.layer = to_index(arg, value(), 0);
    else if (arg == "--reference") a.reference = value();
    else if (arg == "--tokens") a.tokens = to_index(arg, value(), 1);
    else if (arg == "--bound") {
      const std::string v = value();
      try {
        a.bound = std::stod(v);
      } catch (const std::exception&) {
        usage(("--bound expects a number, got '" + v + "'").c_str());
      }
    } else if (arg == "--write-demo") a.write_demo = value();
    else if (arg == "--type") a.type = value();
    else if (arg == "--family") a.family = value();
    else if (!arg.empty() && arg[0] == '-') usage(("unknown option '" + arg + "'").c_str());
    else if (a.model.empty()) a.model = arg;
    else usage(("one model file expected, got a second: '" + arg + "'").c_str());
  }
  if (a.write_demo && !a.model.empty()) usage("--write-demo takes no MODEL.gguf: it writes one");
  if (!a.write_demo && a.model.empty()) usage("no MODEL.gguf given");
  return a;
}

// ---------------------------------------------------------------------------------------------
// Printing what the file holds.

std::string join_types(const moe::io::GgufLayerInfo& info, const std::set<std::string>& roles) {
  std::vector<std::string> types;
  for (const auto& t : info.tensors)
    if (roles.count(t.role)) {
      const std::string name(moe::io::ggml_type_name(t.type));
      if (std::find(types.begin(), types.end(), name) == types.end()) types.push_back(name);
    }
  std::string out;
  for (const auto& t : types) out += (out.empty() ? "" : "/") + t;
  return out;
}

void print_info(const moe::io::GgufLayerInfo& info) {
  std::printf("block %ld: %s (general.architecture '%s'), %ld experts, top-%ld, d_model %ld, d_ff %ld\n",
              long(info.layer), std::string(moe::io::gguf_family_name(info.family)).c_str(), info.architecture.c_str(),
              long(info.num_experts), long(info.top_k), long(info.d_model), long(info.d_ff));
  const char* layout = info.fused_gate_up ? " (ffn_gate_up_exps, ffn_down_exps)"
                       : info.stacked       ? " (ffn_{gate,up,down}_exps)"
                                            : " (one tensor per expert)";
  std::string weights =
      "experts " + join_types(info, {"gate", "up", "gate_up", "down"}) + layout + ", router " + join_types(info, {"router"});
  if (info.shared_d_ff > 0)
    weights += ", shared expert " + join_types(info, {"shared gate", "shared up", "shared down"}) + " (d_ff " +
               std::to_string(info.shared_d_ff) + ")";
  if (info.find("shared expert gate")) weights += ", shared expert gate " + join_types(info, {"shared expert gate"});
  if (info.find("correction bias")) weights += ", correction bias " + join_types(info, {"correction bias"});
  if (info.find("router bias"))
    weights += ", biases " + join_types(info, {"router bias", "gate bias", "up bias", "down bias"});
  std::printf("weights: %s\n", weights.c_str());
  std::printf("layer: %s\n", info.quantized()
                                 ? ("quantized experts (" + std::string(moe::io::ggml_type_name(info.expert_type)) +
                                    " blocks as stored, 8-bit activations), float router")
                                       .c_str()
                                 : "float experts and router");
}

// ---------------------------------------------------------------------------------------------
// The demo model.

GgmlType parse_type(const std::string& t) {
  static const std::map<std::string, GgmlType> types{{"f32", GgmlType::F32},   {"f16", GgmlType::F16},
                                                      {"bf16", GgmlType::BF16}, {"q8_0", GgmlType::Q8_0},
                                                      {"q4_0", GgmlType::Q4_0}, {"q4_k", GgmlType::Q4_K}};
  const auto it = types.find(t);
  if (it == types.end()) usage(("--type expects f32, f16, bf16, q8_0, q4_0 or q4_k, got '" + t + "'").c_str());
  return it->second;
}

GgufFamily parse_family(const std::string& f) {
  for (const GgufFamily g : {GgufFamily::mixtral, GgufFamily::olmoe, GgufFamily::qwen2_moe, GgufFamily::deepseek_v3,
                             GgufFamily::gpt_oss})
    if (moe::io::gguf_family_name(g) == f) return g;
  usage(("--family expects mixtral, olmoe, qwen2_moe, deepseek_v3 or gpt_oss, got '" + f + "'").c_str());
}

RowMatrix<float> normal(Index rows, Index cols, std::mt19937& rng, float scale) {
  std::normal_distribution<float> n(0.0f, scale);
  RowMatrix<float> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = n(rng);
  return m;
}

moe::SwiGLUExperts<float> swiglu(Index E, Index d, Index ff, std::mt19937& rng) {
  moe::SwiGLUExperts<float> bank(E, d, ff);
  bank.gate_up() = normal(E * 2 * ff, d, rng, 0.06f);
  bank.down() = normal(E * d, ff, rng, 0.06f);
  return bank;
}

/// Saves a layer of the family with random weights at `type`.
void save_demo(const std::filesystem::path& out, GgufFamily family, GgmlType type) {
  constexpr Index E = 8, d = 256, ff = 256, k = 2;
  std::mt19937 rng(2024);
  const auto save = [&](const auto& layer) {
    const moe::io::GgufSaveOptions float_type{type};
    switch (type) {
      case GgmlType::Q8_0: moe::io::save_gguf_layer(out, moe::quantize_layer<moe::kernels::BlockQ8_0>(layer), 0, family); break;
      case GgmlType::Q4_0: moe::io::save_gguf_layer(out, moe::quantize_layer<moe::kernels::BlockQ4_0>(layer), 0, family); break;
      case GgmlType::Q4_K: moe::io::save_gguf_layer(out, moe::quantize_layer<moe::kernels::BlockQ4_K>(layer), 0, family); break;
      default: moe::io::save_gguf_layer(out, layer, 0, family, float_type); break;
    }
  };
  const auto router = [&] { return normal(E, d, rng, 0.1f); };
  switch (family) {
    case GgufFamily::mixtral:
    case GgufFamily::olmoe: {
      auto experts = swiglu(E, d, ff, rng);
      save(moe::MixtralMoE<float>(std::move(experts), moe::SoftmaxTopKRouter<float>(router(), k)));
      break;
    }
    case GgufFamily::qwen2_moe: {
      auto experts = swiglu(E, d, ff, rng);
      moe::SoftmaxTopKRouter<float> r(router(), k, moe::SoftmaxTopK<float>{false});
      moe::SharedExpertCombiner<moe::SwiGLUExperts<float>, moe::SharedGate::sigmoid> shared(swiglu(1, d, 2 * ff, rng));
      shared.gate_weight() = normal(d, 1, rng, 0.1f).col(0);
      save(moe::Qwen2MoE<float>(std::move(experts), std::move(r), std::move(shared)));
      break;
    }
    case GgufFamily::deepseek_v3: {
      auto experts = swiglu(E, d, ff, rng);
      moe::SigmoidGroupLimited<float> g;
      g.n_group = 4;
      g.topk_group = 2;
      g.routed_scaling_factor = 2.5f;
      g.correction_bias = normal(E, 1, rng, 0.05f).col(0);
      moe::GroupLimitedRouter<float> r(router(), k, std::move(g));
      moe::SharedExpertCombiner<moe::SwiGLUExperts<float>, moe::SharedGate::none> shared(swiglu(1, d, ff, rng));
      save(moe::DeepSeekV3MoE<float>(std::move(experts), std::move(r), std::move(shared)));
      break;
    }
    case GgufFamily::gpt_oss: {
      moe::GptOssExperts<float> experts(E, d, ff);
      experts.gate_up() = normal(E * d, 2 * ff, rng, 0.06f);
      experts.down() = normal(E * ff, d, rng, 0.06f);
      experts.gate_up_bias() = normal(E, 2 * ff, rng, 0.1f);
      experts.down_bias() = normal(E, d, rng, 0.1f);
      moe::TopKSoftmaxRouter<float> r(router(), k, {}, normal(E, 1, rng, 0.1f).col(0));
      save(moe::GptOssMoE<float>(std::move(experts), std::move(r)));
      break;
    }
  }
}

/// The reference for a demo file: 64 random tokens and the float64 layer's output on them.
void save_reference(const std::filesystem::path& model, const std::filesystem::path& out) {
  const auto file = moe::io::GgufFile::open(model);
  const Index d = moe::io::describe_gguf_layer(file, 0).d_model;
  std::mt19937 rng(7);
  const RowMatrix<float> x = normal(64, d, rng, 1.0f);
  const RowMatrix<double> y = moe::io::visit_gguf_layer_as<double>(file, 0, [&](const auto& layer) {
    moe::Workspace<double> ws;
    return RowMatrix<double>(layer.forward(x.cast<double>(), ws));
  });
  moe::io::SafetensorsWriter w;
  w.add<float>("input", {x.rows(), x.cols()}, std::span<const float>(x.data(), static_cast<std::size_t>(x.size())));
  w.add<double>("expected.output", {y.rows(), y.cols()}, std::span<const double>(y.data(), static_cast<std::size_t>(y.size())));
  w.save(out);
}

// ---------------------------------------------------------------------------------------------

int run(const Args& a) {
  const auto file = moe::io::GgufFile::open(a.model);
  const moe::io::GgufLayerInfo info = moe::io::describe_gguf_layer(file, a.layer);
  print_info(info);

  RowMatrix<float> x;
  std::optional<moe::io::SafetensorsFile> ref;
  if (a.reference) {
    ref.emplace(moe::io::SafetensorsFile::open(*a.reference));
    x = ref->read_rows<float>("input", -1, info.d_model);
    std::printf("input: %ld tokens from %s\n", long(x.rows()),
                std::filesystem::path(*a.reference).filename().string().c_str());
  } else {
    std::mt19937 rng(1);
    x = normal(a.tokens, info.d_model, rng, 1.0f);
    std::printf("input: %ld random tokens (N(0, 1), seed 1)\n", long(x.rows()));
  }

  std::vector<Index> load;
  const RowMatrix<float> y = moe::io::visit_gguf_layer(file, a.layer, [&](const auto& layer) {
    moe::Workspace<float> ws;
    RowMatrix<float> out = layer.forward(x, ws);
    load = ws.stats.expert_load;
    return out;
  });
  std::string counts;
  for (const Index n : load) counts += " " + std::to_string(n);
  std::printf("expert load (tokens per expert):%s\n", counts.c_str());
  if (!ref) return 0;

  const RowMatrix<double> expected = ref->read_rows<double>("expected.output", y.rows(), y.cols());
  const double scale = expected.cwiseAbs().maxCoeff();
  const double err = (y.cast<double>() - expected).cwiseAbs().maxCoeff() / (scale > 0 ? scale : 1.0);
  const double bound = a.bound.value_or(moe::io::gguf_layer_error_bound(info.expert_type));
  const bool ok = err <= bound;
  std::printf("max relative error %.1e against the reference (bound %.0e%s): %s\n", err, bound,
              a.bound ? ", from --bound"
                      : (" for " + std::string(moe::io::ggml_type_name(info.expert_type)) + " experts").c_str(),
              ok ? "within" : "EXCEEDED");
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Args a = parse(argc, argv);
  try {
    if (a.write_demo) {
      const std::filesystem::path out = *a.write_demo;
      const GgmlType type = parse_type(a.type);
      const GgufFamily family = parse_family(a.family);
      std::filesystem::path reference = out;
      reference.replace_extension(".reference.safetensors");
      save_demo(out, family, type);
      save_reference(out, reference);
      std::printf("demo: wrote %s (%s, %s experts) and %s\n", out.filename().string().c_str(),
                  a.family.c_str(), std::string(moe::io::ggml_type_name(type)).c_str(),
                  reference.filename().string().c_str());
      a.model = out.string();
      a.reference = reference.string();
    }
    return run(a);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "load_gguf_layer: %s\n", e.what());
    return 2;
  }
}
