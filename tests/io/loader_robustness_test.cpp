// Every loader (the HF families, Switch, Soft MoE and the "moe." layouts: noisy top-k, expert
// choice, hash, modality experts, domain-aware, task-aware, top-p, threshold skipping, low-rank,
// hierarchical, convolutional, multi-head, recurrent) against well-formed files that are wrong for
// it: another family's file, a missing expert, a transposed weight, an integer weight, a 1-D
// tensor where a matrix belongs; and 16-bit float files, which must load (converted exactly).
// Each refusal is the documented moe::io exception with a message naming the loader and the
// tensor (docs/errors.md).
#include <moe/io/conv_loader.hpp>
#include <moe/io/hf_loader.hpp>
#include <moe/io/low_rank_loader.hpp>
#include <moe/io/multi_head_loader.hpp>
#include <moe/io/recurrent_loader.hpp>
#include <moe/io/routing_loaders.hpp>
#include <moe/io/soft_moe_loader.hpp>
#include <moe/io/switch_loader.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace {

using Catch::Contains;
using moe::io::DType;
using moe::io::SafetensorsFile;
using moe::io::SafetensorsWriter;

struct Tensor {
  std::string name;
  std::vector<std::int64_t> shape;
  DType dtype = DType::F32;
  std::vector<std::int64_t> ints = {};  // an I64 tensor's values; empty: i % E
};

constexpr std::int64_t E = 4, D = 4, FF = 3;  // FF != D so a transposed matrix has another shape

/// What the tests need to know of one family: its tensors, how to load it, and which tensor
/// each malformation targets.
struct LoaderCase {
  std::string name;    // for INFO
  std::string loader;  // as the messages spell it
  std::vector<Tensor> tensors;
  std::function<void(const SafetensorsFile&)> load;
  std::string matrix;             // a 2-D weight read first: made 1-D or I64
  std::string dropped;            // one tensor of expert 2
  std::string transposed;         // a weight whose shape is checked against sizes read before it
  std::string transposed_expect;  // the message's "expected shape [..], got [..]"
};

void swiglu(std::vector<Tensor>& t, const std::string& p, const char* g, const char* u, const char* d) {
  for (std::int64_t e = 0; e < E; ++e) {
    const std::string q = p + std::to_string(e) + ".";
    t.push_back({q + g, {FF, D}});
    t.push_back({q + u, {FF, D}});
    t.push_back({q + d, {D, FF}});
  }
}

const std::string swiglu_t = "expected shape [4, 3], got [3, 4]";

std::vector<LoaderCase> families() {
  using namespace moe::io;
  std::vector<LoaderCase> out;
  {
    LoaderCase f{"mixtral", "moe::io::load_mixtral", {{"block_sparse_moe.gate.weight", {E, D}}}, nullptr,
             "block_sparse_moe.gate.weight", "block_sparse_moe.experts.2.w3.weight",
             "block_sparse_moe.experts.1.w2.weight", swiglu_t};
    swiglu(f.tensors, "block_sparse_moe.experts.", "w1.weight", "w3.weight", "w2.weight");
    f.load = [](const SafetensorsFile& s) { (void)load_mixtral<float>(s, "block_sparse_moe.", {2}); };
    out.push_back(f);
  }
  const auto olmoe_tensors = [] {
    std::vector<Tensor> t{{"mlp.gate.weight", {E, D}}};
    swiglu(t, "mlp.experts.", "gate_proj.weight", "up_proj.weight", "down_proj.weight");
    return t;
  };
  {
    LoaderCase f{"olmoe", "moe::io::load_olmoe", olmoe_tensors(), nullptr, "mlp.gate.weight",
             "mlp.experts.2.up_proj.weight", "mlp.experts.1.down_proj.weight", swiglu_t};
    f.load = [](const SafetensorsFile& s) { (void)load_olmoe<float>(s, "mlp.", {2, false}); };
    out.push_back(f);
  }
  {
    LoaderCase f{"qwen2_moe", "moe::io::load_qwen2_moe", olmoe_tensors(), nullptr, "mlp.gate.weight",
             "mlp.experts.2.gate_proj.weight", "mlp.shared_expert.down_proj.weight", "expected shape [4, 5], got [5, 4]"};
    f.tensors.push_back({"mlp.shared_expert.gate_proj.weight", {5, D}});
    f.tensors.push_back({"mlp.shared_expert.up_proj.weight", {5, D}});
    f.tensors.push_back({"mlp.shared_expert.down_proj.weight", {D, 5}});
    f.tensors.push_back({"mlp.shared_expert_gate.weight", {1, D}});
    f.load = [](const SafetensorsFile& s) { (void)load_qwen2_moe<float>(s, "mlp.", {2, false}); };
    out.push_back(f);
  }
  {
    LoaderCase f{"deepseek_v3", "moe::io::load_deepseek_v3", olmoe_tensors(), nullptr, "mlp.gate.weight",
             "mlp.experts.2.down_proj.weight", "mlp.experts.3.down_proj.weight", swiglu_t};
    f.tensors.push_back({"mlp.gate.e_score_correction_bias", {E}});
    f.tensors.push_back({"mlp.shared_experts.gate_proj.weight", {5, D}});
    f.tensors.push_back({"mlp.shared_experts.up_proj.weight", {5, D}});
    f.tensors.push_back({"mlp.shared_experts.down_proj.weight", {D, 5}});
    f.load = [](const SafetensorsFile& s) {
      DeepSeekV3Config c;
      c.top_k = 2;
      c.n_group = 2;
      c.topk_group = 1;
      (void)load_deepseek_v3<float>(s, "mlp.", c);
    };
    out.push_back(f);
  }
  {
    // GPT-OSS fuses its experts: the "missing expert" is a fused tensor one expert short.
    LoaderCase f{"gpt_oss", "moe::io::load_gpt_oss",
             {{"mlp.router.weight", {E, D}},
              {"mlp.router.bias", {E}},
              {"mlp.experts.gate_up_proj", {E, D, 2 * FF}},
              {"mlp.experts.gate_up_proj_bias", {E, 2 * FF}},
              {"mlp.experts.down_proj", {E, FF, D}},
              {"mlp.experts.down_proj_bias", {E, D}}},
             nullptr, "mlp.router.weight", "", "mlp.experts.down_proj", "expected shape [4, 3, 4], got [4, 4, 3]"};
    f.load = [](const SafetensorsFile& s) { (void)load_gpt_oss<float>(s, "mlp.", {2}); };
    out.push_back(f);
  }
  {
    LoaderCase f{"switch", "moe::io::load_switch_transformers", {{"mlp.router.classifier.weight", {E, D}}}, nullptr,
             "mlp.router.classifier.weight", "mlp.experts.expert_2.wo.weight", "mlp.experts.expert_1.wo.weight",
             swiglu_t};
    for (std::int64_t e = 0; e < E; ++e) {
      f.tensors.push_back({"mlp.experts.expert_" + std::to_string(e) + ".wi.weight", {FF, D}});
      f.tensors.push_back({"mlp.experts.expert_" + std::to_string(e) + ".wo.weight", {D, FF}});
    }
    f.load = [](const SafetensorsFile& s) { (void)load_switch_transformers<float>(s, "mlp."); };
    out.push_back(f);
  }
  {
    LoaderCase f{"soft_moe", "moe::io::load_soft_moe", {{"soft_moe.phi", {D, E}}}, nullptr, "soft_moe.phi",
             "soft_moe.experts.2.wi.weight", "soft_moe.experts.1.wo.weight", swiglu_t};
    for (std::int64_t e = 0; e < E; ++e) {
      f.tensors.push_back({"soft_moe.experts." + std::to_string(e) + ".wi.weight", {FF, D}});
      f.tensors.push_back({"soft_moe.experts." + std::to_string(e) + ".wo.weight", {D, FF}});
    }
    f.load = [](const SafetensorsFile& s) { (void)load_soft_moe<float>(s, "soft_moe."); };
    out.push_back(f);
  }
  const auto moe_tensors = [](bool gate, bool noise) {
    std::vector<Tensor> t;
    if (gate) t.push_back({"moe.gate.weight", {E, D}});
    if (noise) t.push_back({"moe.noise.weight", {E, D}});
    swiglu(t, "moe.experts.", "w1.weight", "w3.weight", "w2.weight");
    return t;
  };
  {
    LoaderCase f{"noisy_top_k", "moe::io::load_noisy_top_k", moe_tensors(true, true), nullptr, "moe.gate.weight",
             "moe.experts.2.w2.weight", "moe.experts.1.w2.weight", swiglu_t};
    f.load = [](const SafetensorsFile& s) { (void)load_noisy_top_k<float>(s, "moe.", {2}); };
    out.push_back(f);
  }
  {
    LoaderCase f{"expert_choice", "moe::io::load_expert_choice", moe_tensors(true, false), nullptr, "moe.gate.weight",
             "moe.experts.2.w1.weight", "moe.experts.1.w2.weight", swiglu_t};
    f.load = [](const SafetensorsFile& s) { (void)load_expert_choice<float>(s, "moe."); };
    out.push_back(f);
  }
  {
    // Hash routing has no gate: the first matrix it reads is expert 0's w1.
    LoaderCase f{"hash", "moe::io::load_hash", moe_tensors(false, false), nullptr, "moe.experts.0.w1.weight",
             "moe.experts.2.w3.weight", "moe.experts.1.w2.weight", swiglu_t};
    f.tensors.push_back({"moe.hash_table", {8}, DType::I64});
    f.load = [](const SafetensorsFile& s) { (void)load_hash<float>(s, "moe."); };
    out.push_back(f);
  }
  {
    // The table i % E would give every modality a single expert, fewer than k = 2: two
    // cross-modal experts instead, so M = 2 and each modality has three open.
    LoaderCase f{"modality_experts", "moe::io::load_modality_experts", moe_tensors(true, false), nullptr,
                 "moe.gate.weight", "moe.experts.2.w3.weight", "moe.experts.1.w2.weight", swiglu_t};
    f.tensors.push_back({"moe.expert_modality", {E}, DType::I64, {0, -1, 1, -1}});
    f.load = [](const SafetensorsFile& s) { (void)load_modality_experts<float>(s, "moe.", {2}); };
    out.push_back(f);
  }
  {
    // D = 3 != E, so the transposed affinities [E, D] have another shape than [D, E].
    LoaderCase f{"domain_aware", "moe::io::load_domain_aware", moe_tensors(true, false), nullptr, "moe.gate.weight",
                 "moe.experts.2.w1.weight", "moe.domain_affinity", "expected shape [3, 4], got [4, 3]"};
    f.tensors.push_back({"moe.domain_classifier.weight", {3, D}});
    f.tensors.push_back({"moe.domain_affinity", {3, E}});
    f.load = [](const SafetensorsFile& s) { (void)load_domain_aware<float>(s, "moe.", {2}); };
    out.push_back(f);
  }
  {
    // Two task routers [E, D] and their sensitivities [2]. E = D, so a transposed task router has
    // its own shape: the transposed weight is an expert's.
    LoaderCase f{"task_aware", "moe::io::load_task_aware", moe_tensors(true, false), nullptr, "moe.gate.weight",
                 "moe.experts.2.w3.weight", "moe.experts.1.w2.weight", swiglu_t};
    f.tensors.push_back({"moe.task_gates.0.weight", {E, D}});
    f.tensors.push_back({"moe.task_gates.1.weight", {E, D}});
    f.tensors.push_back({"moe.task_sensitivity", {2}});
    f.load = [](const SafetensorsFile& s) { (void)load_task_aware<float>(s, "moe.", {2}); };
    out.push_back(f);
  }
  {
    // Top-p and threshold skipping read expert choice's names: the gate and SwiGLU experts.
    LoaderCase f{"top_p", "moe::io::load_top_p", moe_tensors(true, false), nullptr, "moe.gate.weight",
                 "moe.experts.2.w3.weight", "moe.experts.1.w2.weight", swiglu_t};
    f.load = [](const SafetensorsFile& s) { (void)load_top_p<float>(s, "moe.", {0.5, 2}); };
    out.push_back(f);
  }
  {
    LoaderCase f{"threshold_skip", "moe::io::load_threshold_skip", moe_tensors(true, false), nullptr, "moe.gate.weight",
                 "moe.experts.2.w1.weight", "moe.experts.0.w2.weight", swiglu_t};
    f.load = [](const SafetensorsFile& s) { (void)load_threshold_skip<float>(s, "moe.", {0.5, 2}); };
    out.push_back(f);
  }
  {
    // Low-rank experts of rank FF over a base [D, D]: lora_A [FF, D], lora_B [D, FF].
    LoaderCase f{"low_rank", "moe::io::load_low_rank", {{"moe.gate.weight", {E, D}}, {"moe.base.weight", {D, D}}},
                 nullptr, "moe.gate.weight", "moe.experts.2.lora_B.weight", "moe.experts.1.lora_B.weight",
                 "expected shape [4, 3], got [3, 4]"};
    for (std::int64_t e = 0; e < E; ++e) {
      f.tensors.push_back({"moe.experts." + std::to_string(e) + ".lora_A.weight", {FF, D}});
      f.tensors.push_back({"moe.experts." + std::to_string(e) + ".lora_B.weight", {D, FF}});
    }
    f.load = [](const SafetensorsFile& s) { (void)load_low_rank<float>(s, "moe.", {2}); };
    out.push_back(f);
  }
  {
    // Hierarchical: 2 groups of 2 of the E = 4 SwiGLU experts, a primary router [2, D] and one
    // [2, D] per group.
    std::vector<Tensor> t{{"moe.gate.weight", {2, D}}};
    swiglu(t, "moe.experts.", "w1.weight", "w3.weight", "w2.weight");
    t.push_back({"moe.group_gates.0.weight", {2, D}});
    t.push_back({"moe.group_gates.1.weight", {2, D}});
    LoaderCase f{"hierarchical", "moe::io::load_hierarchical", t, nullptr, "moe.gate.weight",
                 "moe.experts.2.w1.weight", "moe.experts.1.w2.weight", swiglu_t};
    f.load = [](const SafetensorsFile& s) { (void)load_hierarchical<float>(s, "moe.", {2, 1}); };
    out.push_back(f);
  }
  {
    // Convolutional experts: the gate, a causal depthwise kernel [2, D] per expert, SwiGLU.
    LoaderCase f{"conv_expert", "moe::io::load_conv_experts", moe_tensors(true, false), nullptr, "moe.gate.weight",
                 "moe.experts.2.conv.weight", "moe.experts.1.w2.weight", swiglu_t};
    for (std::int64_t e = 0; e < E; ++e) f.tensors.push_back({"moe.experts." + std::to_string(e) + ".conv.weight", {2, D}});
    f.load = [](const SafetensorsFile& s) { (void)load_conv_experts<float>(s, "moe."); };
    out.push_back(f);
  }
  {
    // Multi-head: h = 2 heads of D / 2 = 2; the gate [E, 2] and SwiGLU experts of width 2
    // between the two [D, D] projections.
    std::vector<Tensor> t{{"moe.head_proj.weight", {D, D}}, {"moe.gate.weight", {E, D / 2}}};
    for (std::int64_t e = 0; e < E; ++e) {
      const std::string q = "moe.experts." + std::to_string(e) + ".";
      t.push_back({q + "w1.weight", {FF, D / 2}});
      t.push_back({q + "w3.weight", {FF, D / 2}});
      t.push_back({q + "w2.weight", {D / 2, FF}});
    }
    t.push_back({"moe.merge_proj.weight", {D, D}});
    LoaderCase f{"multi_head", "moe::io::load_multi_head", t, nullptr, "moe.gate.weight", "moe.experts.2.w3.weight",
                 "moe.experts.1.w2.weight", "expected shape [2, 3], got [3, 2]"};
    f.load = [](const SafetensorsFile& s) { (void)load_multi_head<float>(s, "moe."); };
    out.push_back(f);
  }
  {
    // Recurrent: the gate and per expert torch.nn.GRU's tensors with hidden size H = 2.
    std::vector<Tensor> t{{"moe.gate.weight", {E, D}}};
    for (std::int64_t e = 0; e < E; ++e) {
      const std::string q = "moe.experts." + std::to_string(e) + ".";
      t.push_back({q + "weight_ih", {6, D}});
      t.push_back({q + "weight_hh", {6, 2}});
      t.push_back({q + "bias_ih", {6}});
      t.push_back({q + "bias_hh", {6}});
    }
    LoaderCase f{"recurrent", "moe::io::load_recurrent", t, nullptr, "moe.gate.weight", "moe.experts.2.weight_hh",
                 "moe.experts.1.weight_hh", "expected shape [6, 2], got [2, 6]"};
    f.load = [](const SafetensorsFile& s) { (void)load_recurrent<float>(s, "moe."); };
    out.push_back(f);
  }
  return out;
}

/// Values k/8 for small k: exact in F32, F16 and BF16, so a converted file must load equal.
float value_at(std::size_t i) { return static_cast<float>(static_cast<int>(i % 13) - 6) / 8.0f; }

std::uint16_t to_half(float v) {
  // Exact for the values above (|v| <= 0.75, a multiple of 1/8): sign, 5-bit exponent, 10-bit mantissa.
  if (v == 0.0f) return 0;
  const std::uint32_t b = std::bit_cast<std::uint32_t>(v);
  const std::uint32_t sign = (b >> 16) & 0x8000u;
  const auto exponent = static_cast<std::int32_t>((b >> 23) & 0xFFu) - 127 + 15;
  return static_cast<std::uint16_t>(sign | (static_cast<std::uint32_t>(exponent) << 10) | ((b >> 13) & 0x3FFu));
}

/// Writes the tensors; `as` overrides the stored dtype of every floating tensor (F32 = keep).
SafetensorsFile file_of(const std::vector<Tensor>& tensors, DType as = DType::F32) {
  SafetensorsWriter w;
  for (const Tensor& t : tensors) {
    std::int64_t n = 1;
    for (auto s : t.shape) n *= s;
    const auto count = static_cast<std::size_t>(n);
    if (t.dtype == DType::I64) {
      std::vector<std::int64_t> v(count);
      for (std::size_t i = 0; i < count; ++i) v[i] = static_cast<std::int64_t>(i % static_cast<std::size_t>(E));
      if (!t.ints.empty()) {
        REQUIRE(t.ints.size() == count);
        v = t.ints;
      }
      w.add<std::int64_t>(t.name, t.shape, std::span<const std::int64_t>(v));
      continue;
    }
    const DType dtype = t.dtype != DType::F32 ? t.dtype : as;
    std::vector<std::byte> bytes;
    for (std::size_t i = 0; i < count; ++i) {
      const float v = value_at(i);
      std::uint16_t h = 0;
      if (dtype == DType::F16) h = to_half(v);
      if (dtype == DType::BF16) h = static_cast<std::uint16_t>(std::bit_cast<std::uint32_t>(v) >> 16);
      const auto at = bytes.size();
      if (dtype == DType::F32) {
        bytes.resize(at + 4);
        std::memcpy(bytes.data() + at, &v, 4);
      } else {
        bytes.resize(at + 2);
        std::memcpy(bytes.data() + at, &h, 2);
      }
    }
    w.add_raw(t.name, dtype, t.shape, std::move(bytes));
  }
  return SafetensorsFile::from_bytes(w.to_bytes(), "robust.safetensors");
}

std::vector<Tensor> without(std::vector<Tensor> t, const std::string& name) {
  std::erase_if(t, [&](const Tensor& x) { return x.name == name; });
  return t;
}

std::vector<Tensor> modified(std::vector<Tensor> t, const std::string& name, const std::function<void(Tensor&)>& f) {
  bool found = false;
  for (Tensor& x : t)
    if (x.name == name) {
      f(x);
      found = true;
    }
  REQUIRE(found);
  return t;
}

template <class Exception>
void require_refusal(const LoaderCase& f, const SafetensorsFile& file, const std::string& tensor, const std::string& text) {
  INFO(f.name << ": expecting a refusal naming " << tensor << " containing: " << text);
  REQUIRE_THROWS_AS(f.load(file), Exception);
  REQUIRE_THROWS_WITH(f.load(file), Contains("moe::io: file 'robust.safetensors': tensor '" + tensor + "': " +
                                             f.loader + "(): ") &&
                                        Contains(text));
}

}  // namespace

TEST_CASE("every family's own file loads", "[io][loader][robustness]") {
  for (const LoaderCase& f : families()) {
    INFO(f.name);
    REQUIRE_NOTHROW(f.load(file_of(f.tensors)));
  }
}

TEST_CASE("a loader given another family's file loads exactly when the file holds every name it reads",
          "[io][loader][robustness]") {
  // Loaders read their own names and ignore the rest, so a file that is a superset (a
  // DeepSeek-V3 file holds every OLMoE name) loads; any other pairing is refused naming the
  // loader and the first tensor it could not find or use.
  const auto all = families();
  int refused = 0;
  for (const LoaderCase& file_family : all) {
    const SafetensorsFile file = file_of(file_family.tensors);
    std::set<std::string> present;
    for (const Tensor& t : file_family.tensors) present.insert(t.name);
    for (const LoaderCase& loader : all) {
      INFO("file of " << file_family.name << ", loader of " << loader.name);
      const bool superset = std::all_of(loader.tensors.begin(), loader.tensors.end(),
                                        [&](const Tensor& t) { return present.count(t.name) != 0; });
      if (superset) {
        REQUIRE_NOTHROW(loader.load(file));
      } else {
        ++refused;
        REQUIRE_THROWS_AS(loader.load(file), moe::io::MissingTensorError);
        REQUIRE_THROWS_WITH(loader.load(file), Contains("tensor '") && Contains(loader.loader + "(): expected"));
      }
    }
  }
  // Of 20 x 19 = 380 cross pairings only 29 load: OLMoE's names in a Qwen2-MoE and in a
  // DeepSeek-V3 file; expert choice's (the gate and SwiGLU experts), which top-p and threshold
  // skipping read too, in a noisy top-k, a modality, a domain-aware, a task-aware, a
  // hierarchical (whose primary router is a gate of 2 experts to them), a convolutional and a
  // multi-head file (whose gate and experts, of width D / 2, agree with each other) and in the
  // other two of the three: 3 loaders x 9 files. No loader reads a subset of a recurrent file
  // (no SwiGLU experts), and the conv, multi-head and recurrent loaders each need a tensor no
  // other family has.
  REQUIRE(refused == 380 - 29);
}

TEST_CASE("a missing expert is refused naming the loader and the tensor", "[io][loader][robustness]") {
  for (const LoaderCase& f : families()) {
    if (f.dropped.empty()) {  // GPT-OSS: a fused tensor one expert short
      require_refusal<moe::io::TensorMismatchError>(
          f, file_of(modified(f.tensors, "mlp.experts.down_proj", [](Tensor& t) { t.shape[0] = E - 1; })),
          "mlp.experts.down_proj", "expected shape [4, 3, 4], got [3, 3, 4]");
      continue;
    }
    require_refusal<moe::io::MissingTensorError>(f, file_of(without(f.tensors, f.dropped)), f.dropped,
                                                 "expected this tensor");
  }
}

TEST_CASE("a transposed weight is refused with both shapes", "[io][loader][robustness]") {
  for (const LoaderCase& f : families()) {
    const auto t = modified(f.tensors, f.transposed, [](Tensor& x) { std::swap(x.shape[x.shape.size() - 2], x.shape.back()); });
    require_refusal<moe::io::TensorMismatchError>(f, file_of(t), f.transposed, f.transposed_expect);
  }
}

TEST_CASE("an integer weight is refused: the loaders read floating tensors only", "[io][loader][robustness]") {
  for (const LoaderCase& f : families()) {
    const auto t = modified(f.tensors, f.matrix, [](Tensor& x) { x.dtype = DType::I64; });
    require_refusal<moe::io::TensorMismatchError>(f, file_of(t), f.matrix,
                                                  "expected a floating dtype (F32, F64, F16, BF16), got I64");
  }
}

TEST_CASE("a 1-D tensor where a matrix belongs is refused naming its shape", "[io][loader][robustness]") {
  for (const LoaderCase& f : families()) {
    const auto t = modified(f.tensors, f.matrix, [](Tensor& x) { x.shape = {x.shape[0] * x.shape[1]}; });
    require_refusal<moe::io::TensorMismatchError>(f, file_of(t), f.matrix, "expected a 2-D tensor, got shape [");
  }
}

TEST_CASE("F16 and BF16 files load, converted exactly to the layer's type", "[io][loader][robustness]") {
  using Params = std::map<std::string, std::vector<double>>;
  // The layers are loaded inside LoaderCase::load, so the parameters are compared through a second
  // load of the same kind: Mixtral (SwiGLU bank + router) and GPT-OSS (fused, with biases).
  const auto params = [](const auto& layer) {
    Params p;
    layer.for_each_parameter([&](const std::string& name, const auto& block) {
      auto& v = p[name];
      for (moe::Index r = 0; r < block.rows(); ++r)
        for (moe::Index c = 0; c < block.cols(); ++c) v.push_back(static_cast<double>(block(r, c)));
    });
    return p;
  };
  const auto all = families();
  for (const DType dtype : {DType::F16, DType::BF16}) {
    INFO(moe::io::dtype_name(dtype));
    for (const LoaderCase& f : all) {
      INFO(f.name);
      REQUIRE_NOTHROW(f.load(file_of(f.tensors, dtype)));
    }
    const auto m32 = moe::io::load_mixtral<float>(file_of(all[0].tensors), "block_sparse_moe.", {2});
    const auto m16 = moe::io::load_mixtral<double>(file_of(all[0].tensors, dtype), "block_sparse_moe.", {2});
    const Params a = params(m32), b = params(m16);
    REQUIRE(a.size() == b.size());
    REQUIRE(a == b);
    REQUIRE(b.at("gate.weight")[1] == -5.0 / 8.0);  // value_at(1), the conversion's exact result
    const auto g32 = moe::io::load_gpt_oss<float>(file_of(all[4].tensors), "mlp.", {2});
    const auto g16 = moe::io::load_gpt_oss<float>(file_of(all[4].tensors, dtype), "mlp.", {2});
    REQUIRE(params(g32) == params(g16));
  }
}

// A small file must not make a loader allocate a huge bank before it fails: here the router
// claims 2^20 experts and expert 0 has d_ff = 2^16 (a 4 MiB file), so a bank sized from those
// before the other experts are looked for would be 2^20 x 3 x 2^16 floats (768 GiB): bad_alloc,
// or an abort under ASan. The loader checks every expert's tensors first and names the
// missing one.
TEST_CASE("a file claiming many large experts is refused before the bank is allocated", "[io][loader][robustness]") {
  constexpr std::int64_t many = std::int64_t{1} << 20, wide = std::int64_t{1} << 16;
  const std::vector<Tensor> tensors{{"block_sparse_moe.gate.weight", {many, 1}},
                                    {"block_sparse_moe.experts.0.w1.weight", {wide, 1}},
                                    {"block_sparse_moe.experts.0.w3.weight", {wide, 1}},
                                    {"block_sparse_moe.experts.0.w2.weight", {1, wide}}};
  const LoaderCase mixtral = families().front();  // a copy: families() returns a temporary
  require_refusal<moe::io::MissingTensorError>(mixtral, file_of(tensors), "block_sparse_moe.experts.1.w1.weight",
                                               "expected this tensor");
}

// The same recipe in the Switch and Soft MoE loaders, which read ReLU / GELU banks: a router
// (or phi) claiming 2^20 experts and one wide expert present would be a 512 GiB bank.
TEST_CASE("Switch and Soft MoE files claiming many large experts are refused before the bank is allocated",
          "[io][loader][robustness]") {
  constexpr std::int64_t many = std::int64_t{1} << 20, wide = std::int64_t{1} << 16;
  const auto all = families();
  const auto family = [&](const std::string& name) {
    for (const LoaderCase& f : all)
      if (f.name == name) return f;
    FAIL("no family " << name);
    return all.front();
  };
  require_refusal<moe::io::MissingTensorError>(family("switch"),
                                               file_of({{"mlp.router.classifier.weight", {many, 1}},
                                                        {"mlp.experts.expert_0.wi.weight", {wide, 1}},
                                                        {"mlp.experts.expert_0.wo.weight", {1, wide}}}),
                                               "mlp.experts.expert_1.wi.weight", "expected this tensor");
  require_refusal<moe::io::MissingTensorError>(family("soft_moe"),
                                               file_of({{"soft_moe.phi", {1, many}},
                                                        {"soft_moe.experts.0.wi.weight", {wide, 1}},
                                                        {"soft_moe.experts.0.wo.weight", {1, wide}}}),
                                               "soft_moe.experts.1.wi.weight", "expected this tensor");
}

// The domain-aware loader sizes its affinities [D, E] from two other tensors (the classifier's
// rows and the gate's): a [2^20, 1] gate and classifier (8 MiB) with a [1, 1] affinity tensor
// would be 2^40 affinities (4 TiB) allocated before the file's tensor is looked at. The loader
// checks the shape first and names the tensor.
TEST_CASE("a domain-aware file claiming many domains and experts is refused before the affinities are allocated",
          "[io][loader][robustness]") {
  constexpr std::int64_t many = std::int64_t{1} << 20;
  const auto all = families();
  const auto domain = std::find_if(all.begin(), all.end(), [](const LoaderCase& f) { return f.name == "domain_aware"; });
  REQUIRE(domain != all.end());
  require_refusal<moe::io::TensorMismatchError>(*domain,
                                                file_of({{"moe.gate.weight", {many, 1}},
                                                         {"moe.domain_classifier.weight", {many, 1}},
                                                         {"moe.domain_affinity", {1, 1}}}),
                                                "moe.domain_affinity", "expected shape [1048576, 1048576], got [1, 1]");
}

TEST_CASE("a zero d_ff reaches the bank's constructor, whose refusal carries the loader's name",
          "[io][loader][robustness]") {
  // Every bank is built inside the shared recipe, which prefixes the loader to the bank's own
  // std::invalid_argument.
  for (const LoaderCase& f : families()) {
    if (f.name == "gpt_oss") continue;  // fused experts: d_ff comes from gate_up_proj, checked for evenness
    // GRU experts have no d_ff: their width is the hidden size, a third of weight_ih's rows,
    // whose refusals tests/io/recurrent_loader_test.cpp checks.
    if (f.name == "recurrent") continue;
    std::vector<Tensor> t = f.tensors;
    for (Tensor& x : t)
      // experts.{e}. and experts.expert_{e}.; 2-D, since expert_modality (a table [E]) is no
      // weight; not the conv kernels [w, D], whose width is no d_ff
      if (x.name.find("xpert") != std::string::npos && x.shape.size() == 2 &&
          x.name.find("conv.weight") == std::string::npos) {
        if (x.shape[0] == FF || x.shape[0] == 5) x.shape[0] = 0;
        else x.shape[1] = 0;
      }
    INFO(f.name);
    REQUIRE_THROWS_AS(f.load(file_of(t)), std::invalid_argument);
    // Low-rank experts' width is their rank (lora_A's rows), which the bank calls rank.
    const std::string width = f.name == "low_rank" ? "rank" : "d_ff";
    REQUIRE_THROWS_WITH(f.load(file_of(t)), Contains(f.loader + "(): ") && Contains(width + " expected >= 1, got 0"));
  }
}
