// Checkpoint: one safetensors file or a Hugging Face sharded checkpoint, as the loaders read it.
// Sharded round trips through save_layer_sharded (bit for bit, every parameter), an index
// written by hand over shards that split a layer arbitrarily, lazy opening (a garbage shard the
// layer does not use is never read), every refusal of a malformed index with its message, and
// messages about a tensor naming the shard that holds it.
#include <moe/io/checkpoint.hpp>

#include <moe/io/save_layer.hpp>

#include "support/random.hpp"
#include "support/safetensors_file.hpp"

#include <catch2/catch.hpp>
#include <support/bits.hpp>
#include <support/temp_dir.hpp>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

// Everything here lives in a namespace of its own: the unity build compiles this file with
// others of moe_io_tests that define E, D, random, same_bits, mixtral_writer ... file-locally.
namespace moe_checkpoint_test {
namespace {

namespace fs = std::filesystem;
using Catch::Contains;
using Catch::StartsWith;
using moe::Index;
using moe::RowMatrix;
using moe::io::Checkpoint;
using moe::io::Family;
using moe::io::FormatError;
using moe::io::MissingTensorError;
using moe::io::SafetensorsFile;
using moe::io::SafetensorsWriter;
using moe::io::TensorMismatchError;

constexpr Index E = 4, D = 6, FF = 5, T = 9;

using moe::test::TempDir;

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

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

/// Every parameter's bytes in for_each_parameter order (router, experts, combiner), with its
/// shape: equal means equal bit for bit, -0.0 and NaN payloads included.
template <class Layer>
std::vector<std::pair<std::pair<Index, Index>, std::vector<unsigned char>>> parameter_bits(const Layer& layer) {
  using S = typename Layer::scalar_type;
  std::vector<std::pair<std::pair<Index, Index>, std::vector<unsigned char>>> out;
  layer.for_each_parameter([&](const std::string&, const auto& block) {
    auto& [shape, bytes] = out.emplace_back();
    shape = {block.rows(), block.cols()};
    for (Index r = 0; r < block.rows(); ++r)
      for (Index c = 0; c < block.cols(); ++c) {
        const S v = block(r, c);
        unsigned char b[sizeof(S)];
        std::memcpy(b, &v, sizeof(S));
        bytes.insert(bytes.end(), b, b + sizeof(S));
      }
  });
  return out;
}

/// Every parameter equal bit for bit, and the forward too.
template <class Layer>
void require_same_layer(const Layer& original, const Layer& loaded) {
  using S = typename Layer::scalar_type;
  REQUIRE(loaded.num_experts() == original.num_experts());
  REQUIRE(parameter_bits(loaded) == parameter_bits(original));
  const RowMatrix<S> x = random<S>(T, original.input_dim(), 99);
  typename Layer::workspace_type ws_a, ws_b;
  REQUIRE(moe::test::same_bits(original.forward(x, ws_a), loaded.forward(x, ws_b)));
}

std::set<std::string> set_of(const std::vector<std::string>& v) { return {v.begin(), v.end()}; }

/// What save_layer_sharded wrote: shard file name -> its tensor names, read back from the files.
std::map<std::string, std::set<std::string>> shard_contents(const fs::path& folder) {
  std::map<std::string, std::set<std::string>> out;
  for (const auto& entry : fs::directory_iterator(folder))
    if (entry.path().extension() == ".safetensors")
      out[entry.path().filename().string()] = set_of(SafetensorsFile::open(entry.path()).names());
  return out;
}

/// The index's weight_map as written.
std::map<std::string, std::string> weight_map_of(const fs::path& folder) {
  std::ifstream in(folder / "model.safetensors.index.json");
  const auto j = nlohmann::json::parse(in);
  return j.at("weight_map").get<std::map<std::string, std::string>>();
}

std::uint64_t total_size_of(const fs::path& folder) {
  std::ifstream in(folder / "model.safetensors.index.json");
  return nlohmann::json::parse(in).at("metadata").at("total_size").get<std::uint64_t>();
}

/// The tensors of expert e under {p}experts.{e}. with the given suffixes.
std::set<std::string> expert_tensors(const std::string& p, Index e, const std::vector<std::string>& suffixes) {
  std::set<std::string> out;
  for (const auto& s : suffixes) out.insert(p + "experts." + std::to_string(e) + "." + s);
  return out;
}

std::string shard(int i, int n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05d-of-%05d.safetensors", i, n);
  return buf;
}

/// Checks the layout save_layer_sharded promises for SwiGLU families: shard 1 holds `first`,
/// shard e + 2 holds expert e's tensors, and the index maps each name to its shard.
void require_expert_shards(const fs::path& folder, const std::string& p, const std::set<std::string>& first,
                           const std::vector<std::string>& suffixes) {
  const int n = static_cast<int>(E) + 1;
  std::map<std::string, std::set<std::string>> expected{{shard(1, n), first}};
  for (Index e = 0; e < E; ++e) expected[shard(static_cast<int>(e) + 2, n)] = expert_tensors(p, e, suffixes);
  REQUIRE(shard_contents(folder) == expected);
  std::map<std::string, std::string> map;
  for (const auto& [file, names] : expected)
    for (const auto& name : names) map[name] = file;
  REQUIRE(weight_map_of(folder) == map);
}

/// A Mixtral layer's tensors (E = 4, d = 6, ff = 5) under `p`, random, in one writer.
SafetensorsWriter mixtral_writer(const std::string& p, unsigned seed = 1) {
  SafetensorsWriter w;
  const moe::MixtralMoE<float> layer(moe::test::swiglu<float>(E, D, FF, seed),
                                     moe::SoftmaxTopKRouter<float>(random<float>(E, D, seed + 2), 2,
                                                                   moe::SoftmaxTopK<float>{true}));
  moe::io::save_layer(w, layer, p, Family::mixtral);
  return w;
}

/// Writes a shard holding `names` of the writer `from` (copied through a file in memory).
void write_shard(const fs::path& path, const SafetensorsFile& from, const std::vector<std::string>& names) {
  SafetensorsWriter w;
  for (const auto& name : names) {
    const auto& info = from.info(name);
    const auto raw = from.raw(name);
    w.add_raw(name, info.dtype, info.shape, std::vector<std::byte>(raw.begin(), raw.end()));
  }
  w.save(path);
}

std::string index_json(const std::map<std::string, std::string>& weight_map) {
  nlohmann::json j;
  j["metadata"] = {{"total_size", 0}};
  j["weight_map"] = weight_map;
  return j.dump(2);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Round trips through save_layer_sharded

TEMPLATE_TEST_CASE("Mixtral saved sharded, one file per expert, loads back bit for bit", "[io][checkpoint]", float,
                   double) {
  using S = TestType;
  const TempDir dir("mixtral");
  const moe::MixtralMoE<S> layer(moe::test::swiglu<S>(E, D, FF, 1),
                                 moe::SoftmaxTopKRouter<S>(random<S>(E, D, 3), 2, moe::SoftmaxTopK<S>{true}));
  const std::string p = "model.layers.3.block_sparse_moe.";
  const fs::path index = moe::io::save_layer_sharded(dir.path(), layer, p, Family::mixtral);
  REQUIRE(index == dir / "model.safetensors.index.json");
  require_expert_shards(dir.path(), p, {p + "gate.weight"}, {"w1.weight", "w3.weight", "w2.weight"});
  REQUIRE(total_size_of(dir.path()) == (E * D + E * 3 * FF * D) * sizeof(S));

  for (const fs::path& path : {dir.path(), index}) {  // the folder or the index itself
    const Checkpoint ckpt = Checkpoint::open(path);
    REQUIRE(ckpt.is_sharded());
    REQUIRE(ckpt.display_name() == index.string());
    REQUIRE(ckpt.num_shards() == static_cast<std::size_t>(E) + 1);
    REQUIRE(ckpt.shards_opened() == 0);
    REQUIRE(ckpt.size() == static_cast<std::size_t>(1 + 3 * E));
    REQUIRE(ckpt.file_name(p + "experts.2.w2.weight") == dir.str(shard(4, 5)));
    require_same_layer(layer, moe::io::load_mixtral<S>(ckpt, p, {2}));
    REQUIRE(ckpt.shards_opened() == static_cast<std::size_t>(E) + 1);
  }
}

TEMPLATE_TEST_CASE("Qwen2-MoE saved sharded keeps the shared expert and its gate with the router", "[io][checkpoint]",
                   float, double) {
  using S = TestType;
  const TempDir dir("qwen2");
  moe::SharedExpertCombiner<moe::SwiGLUExperts<S>, moe::SharedGate::sigmoid> shared(moe::test::swiglu<S>(1, D, 7, 11));
  moe::test::fill(shared.gate_weight(), 13, 0.5);
  const moe::Qwen2MoE<S> layer(moe::test::swiglu<S>(E, D, FF, 1),
                               moe::SoftmaxTopKRouter<S>(random<S>(E, D, 3), 2, moe::SoftmaxTopK<S>{false}),
                               std::move(shared));
  const std::string p = "model.layers.0.mlp.";
  moe::io::save_layer_sharded(dir.path(), layer, p);
  require_expert_shards(dir.path(), p,
                        {p + "gate.weight", p + "shared_expert.gate_proj.weight", p + "shared_expert.up_proj.weight",
                         p + "shared_expert.down_proj.weight", p + "shared_expert_gate.weight"},
                        {"gate_proj.weight", "up_proj.weight", "down_proj.weight"});
  const auto loaded = moe::io::load_qwen2_moe<S>(Checkpoint::open(dir.path()), p, {2, false});
  require_same_layer(layer, loaded);
  REQUIRE(moe::test::same_bits(loaded.combiner().gate_weight(), layer.combiner().gate_weight()));
}

TEMPLATE_TEST_CASE("DeepSeek-V3 saved sharded keeps its correction bias and shared experts", "[io][checkpoint]", float,
                   double) {
  using S = TestType;
  const TempDir dir("deepseek");
  moe::SigmoidGroupLimited<S> gating;
  gating.n_group = 2;
  gating.topk_group = 1;
  gating.routed_scaling_factor = S(2.5);
  gating.renormalize = true;
  gating.correction_bias = random_vector<S>(E, 17);
  const moe::DeepSeekV3MoE<S> layer(
      moe::test::swiglu<S>(E, D, FF, 1), moe::GroupLimitedRouter<S>(random<S>(E, D, 3), 2, gating),
      moe::SharedExpertCombiner<moe::SwiGLUExperts<S>, moe::SharedGate::none>(moe::test::swiglu<S>(1, D, 3, 19)));
  const std::string p = "model.layers.5.mlp.";
  moe::io::save_layer_sharded(dir.path(), layer, p, Family::deepseek_v3);
  require_expert_shards(dir.path(), p,
                        {p + "gate.weight", p + "gate.e_score_correction_bias", p + "shared_experts.gate_proj.weight",
                         p + "shared_experts.up_proj.weight", p + "shared_experts.down_proj.weight"},
                        {"gate_proj.weight", "up_proj.weight", "down_proj.weight"});
  moe::io::DeepSeekV3Config c;
  c.top_k = 2;
  c.n_group = 2;
  c.topk_group = 1;
  c.routed_scaling_factor = 2.5;
  const auto loaded = moe::io::load_deepseek_v3<S>(Checkpoint::open(dir.path()), p, c);
  require_same_layer(layer, loaded);
  REQUIRE(moe::test::same_bits(loaded.router().gating().correction_bias, gating.correction_bias));
}

TEMPLATE_TEST_CASE("GPT-OSS saved sharded: its fused experts cannot split by expert, so they share one shard",
                   "[io][checkpoint]", float, double) {
  using S = TestType;
  const TempDir dir("gpt_oss");
  moe::GptOssExperts<S> experts(E, D, FF, S(1.702), S(7));
  moe::test::fill(experts.gate_up(), 1, 0.3);
  moe::test::fill(experts.gate_up_bias(), 2, 0.3);
  moe::test::fill(experts.down(), 3, 0.3);
  moe::test::fill(experts.down_bias(), 4, 0.3);
  const moe::GptOssMoE<S> layer(experts, moe::TopKSoftmaxRouter<S>(random<S>(E, D, 5), 2, {}, random_vector<S>(E, 6)));
  moe::io::save_layer_sharded(dir.path(), layer, "mlp.");
  REQUIRE(shard_contents(dir.path()) ==
          std::map<std::string, std::set<std::string>>{
              {shard(1, 2), {"mlp.router.weight", "mlp.router.bias"}},
              {shard(2, 2),
               {"mlp.experts.gate_up_proj", "mlp.experts.gate_up_proj_bias", "mlp.experts.down_proj",
                "mlp.experts.down_proj_bias"}}});
  require_same_layer(layer, moe::io::load_gpt_oss<S>(Checkpoint::open(dir.path()), "mlp.", {2}));
}

TEST_CASE("Switch saved sharded splits its experts.expert_{e} tensors by expert", "[io][checkpoint]") {
  const TempDir dir("switch");
  moe::FFNExperts<float, moe::Activation::relu> bank(E, D, FF);
  moe::test::fill(bank.wi(), 1, 0.3);
  moe::test::fill(bank.wo(), 2, 0.3);
  const moe::SwitchMoE<float> layer(bank, moe::SoftmaxTopKRouter<float>(random<float>(E, D, 3), 1,
                                                                        moe::SoftmaxTopK<float>{false}),
                                    moe::WeightedSumCombiner<float>{}, moe::Capacity::fixed(3));
  const std::string p = "encoder.block.1.layer.1.mlp.";
  moe::io::save_layer_sharded(dir.path(), layer, p);
  const auto contents = shard_contents(dir.path());
  REQUIRE(contents.size() == static_cast<std::size_t>(E) + 1);
  REQUIRE(contents.at(shard(1, 5)) == std::set<std::string>{p + "router.classifier.weight"});
  REQUIRE(contents.at(shard(3, 5)) ==
          std::set<std::string>{p + "experts.expert_1.wi.weight", p + "experts.expert_1.wo.weight"});
  require_same_layer(layer, moe::io::load_switch_transformers<float>(Checkpoint::open(dir.path()), p,
                                                                     {moe::Capacity::fixed(3)}));
}

TEST_CASE("save_layer_sharded refuses what save_layer refuses, before writing any file", "[io][checkpoint][errors]") {
  const TempDir dir("refused");
  const moe::MixtralMoE<float> unnormalised(moe::test::swiglu<float>(E, D, FF, 1),
                                            moe::SoftmaxTopKRouter<float>(random<float>(E, D, 3), 2,
                                                                          moe::SoftmaxTopK<float>{false}));
  REQUIRE_THROWS_WITH(moe::io::save_layer_sharded(dir / "out", unnormalised, "m.", Family::mixtral),
                      StartsWith("moe::io::save_mixtral(): router renormalize expected true"));
  REQUIRE(!fs::exists(dir / "out"));
}

TEST_CASE("save_layer_sharded names a folder it cannot create", "[io][checkpoint][errors]") {
  const TempDir dir("no_folder");
  write_text(dir / "file", "x");
  const moe::MixtralMoE<float> layer(moe::test::swiglu<float>(E, D, FF, 1),
                                     moe::SoftmaxTopKRouter<float>(random<float>(E, D, 3), 2,
                                                                   moe::SoftmaxTopK<float>{true}));
  REQUIRE_THROWS_AS(moe::io::save_layer_sharded(dir / "file" / "sub", layer, "m.", Family::mixtral), moe::io::Error);
  REQUIRE_THROWS_WITH(moe::io::save_layer_sharded(dir / "file" / "sub", layer, "m.", Family::mixtral),
                      StartsWith("moe::io: file '" + dir.str("file/sub") + "': cannot create the folder: "));
}

// ---------------------------------------------------------------------------------------------
// Hugging Face indices written by hand

TEST_CASE("An index over two shards that split one layer's tensors arbitrarily loads as the single file does",
          "[io][checkpoint]") {
  const TempDir dir("hand");
  const std::string p = "model.layers.7.block_sparse_moe.";
  const SafetensorsFile whole = moe::test::in_memory(mixtral_writer(p), "whole.safetensors");
  // Alternate tensors between the shards: expert 0's w1 and w3 land apart, the router in b.
  std::vector<std::string> a, b;
  std::map<std::string, std::string> map;
  const auto names = whole.names();
  // Shard b, in a subfolder, is spelled two ways ("sub/./" for the later names): still one shard.
  for (std::size_t i = 0; i < names.size(); ++i) {
    (i % 2 ? a : b).push_back(names[i]);
    map[names[i]] = i % 2 ? "part-a.safetensors" : i < names.size() / 2 ? "sub/part-b.safetensors"
                                                                          : "sub/./part-b.safetensors";
  }
  fs::create_directories(dir / "sub");
  write_shard(dir / "part-a.safetensors", whole, a);
  write_shard(dir / "sub" / "part-b.safetensors", whole, b);
  write_text(dir / "model.safetensors.index.json", index_json(map));

  const Checkpoint ckpt = Checkpoint::open(dir.path());
  REQUIRE(ckpt.num_shards() == 2);  // "sub/part-b" and "sub/./part-b" are one shard
  REQUIRE(ckpt.shard_names() ==
          std::vector<std::string>{(dir / "sub" / "part-b.safetensors").string(), dir.str("part-a.safetensors")});
  REQUIRE(ckpt.names() == whole.names());
  const auto from_shards = moe::io::load_mixtral<float>(ckpt, p, {2});
  const auto from_file = moe::io::load_mixtral<float>(whole, p, {2});
  require_same_layer(from_file, from_shards);
  for (const auto& name : names) REQUIRE(ckpt.read<float>(name) == whole.read<float>(name));
}

TEST_CASE("Only the shards holding the layer are opened: a garbage shard of another layer is never read",
          "[io][checkpoint]") {
  const TempDir dir("lazy");
  const SafetensorsFile layer0 = moe::test::in_memory(mixtral_writer("model.layers.0.block_sparse_moe."));
  const SafetensorsFile layer1 = moe::test::in_memory(mixtral_writer("model.layers.1.block_sparse_moe.", 9));
  std::map<std::string, std::string> map;
  for (const auto& name : layer0.names()) map[name] = "model-00001-of-00002.safetensors";
  for (const auto& name : layer1.names()) map[name] = "model-00002-of-00002.safetensors";
  write_shard(dir / "model-00001-of-00002.safetensors", layer0, layer0.names());
  write_text(dir / "model-00002-of-00002.safetensors", "garbage: not a safetensors file at all");
  write_text(dir / "model.safetensors.index.json", index_json(map));

  const Checkpoint ckpt = Checkpoint::open(dir / "model.safetensors.index.json");
  const auto loaded = moe::io::load_mixtral<float>(ckpt, "model.layers.0.block_sparse_moe.", {2});
  REQUIRE(ckpt.shards_opened() == 1);
  require_same_layer(moe::io::load_mixtral<float>(layer0, "model.layers.0.block_sparse_moe.", {2}), loaded);
  // The index alone answers contains and file_name.
  REQUIRE(ckpt.contains("model.layers.1.block_sparse_moe.gate.weight"));
  REQUIRE(ckpt.file_name("model.layers.1.block_sparse_moe.gate.weight") == dir.str("model-00002-of-00002.safetensors"));
  REQUIRE(ckpt.shards_opened() == 1);
  // Asking for layer 1 reads the garbage, and the shard's own reader names it.
  REQUIRE_THROWS_AS(moe::io::load_mixtral<float>(ckpt, "model.layers.1.block_sparse_moe.", {2}), FormatError);
  REQUIRE_THROWS_WITH(moe::io::load_mixtral<float>(ckpt, "model.layers.1.block_sparse_moe.", {2}),
                      StartsWith("moe::io: file '" + dir.str("model-00002-of-00002.safetensors") + "': header length"));
  REQUIRE(ckpt.shards_opened() == 1);
}

TEST_CASE("Several threads loading from one sharded checkpoint open each shard once", "[io][checkpoint]") {
  const TempDir dir("threads");
  const moe::MixtralMoE<float> layer(moe::test::swiglu<float>(E, D, FF, 1),
                                     moe::SoftmaxTopKRouter<float>(random<float>(E, D, 3), 2,
                                                                   moe::SoftmaxTopK<float>{true}));
  moe::io::save_layer_sharded(dir.path(), layer, "m.", Family::mixtral);
  const Checkpoint ckpt = Checkpoint::open(dir.path());
  std::vector<std::vector<std::pair<std::pair<Index, Index>, std::vector<unsigned char>>>> results(4);
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < results.size(); ++i)
    threads.emplace_back([&, i] { results[i] = parameter_bits(moe::io::load_mixtral<float>(ckpt, "m.", {2})); });
  for (auto& t : threads) t.join();
  REQUIRE(ckpt.shards_opened() == static_cast<std::size_t>(E) + 1);
  for (const auto& r : results) REQUIRE(r == parameter_bits(layer));
}

// ---------------------------------------------------------------------------------------------
// Messages name the right file

TEST_CASE("Errors about a tensor name the shard that holds it, a missing tensor names the index",
          "[io][checkpoint][errors]") {
  const TempDir dir("messages");
  const std::string p = "block_sparse_moe.";
  SafetensorsWriter w = mixtral_writer(p);
  SafetensorsWriter bad, discarded;
  w.move_tensor(p + "experts.2.w2.weight", discarded);  // replaced by a transposed one in bad
  const std::vector<float> zeros(static_cast<std::size_t>(D * FF), 0.0f);
  bad.add<float>(p + "experts.2.w2.weight", {FF, D}, std::span<const float>(zeros));
  const std::vector<std::int64_t> ids = {1, 2};
  bad.add<std::int64_t>("ids", {2}, std::span<const std::int64_t>(ids));
  w.save(dir / "good.safetensors");
  bad.save(dir / "bad.safetensors");
  std::map<std::string, std::string> map;
  for (const auto& name : w.names()) map[name] = "good.safetensors";
  for (const auto& name : bad.names()) map[name] = "bad.safetensors";
  write_text(dir / "index.json", index_json(map));
  const Checkpoint ckpt = Checkpoint::open(dir / "index.json");

  REQUIRE_THROWS_AS(moe::io::load_mixtral<float>(ckpt, p, {2}), TensorMismatchError);
  REQUIRE_THROWS_WITH(moe::io::load_mixtral<float>(ckpt, p, {2}),
                      "moe::io: file '" + dir.str("bad.safetensors") +
                          "': tensor 'block_sparse_moe.experts.2.w2.weight': moe::io::load_mixtral(): expected shape "
                          "[6, 5], got [5, 6]");
  REQUIRE_THROWS_WITH(ckpt.read<float>("ids"), "moe::io: file '" + dir.str("bad.safetensors") +
                                                   "': tensor 'ids': expected a floating dtype (F64, F32, F16, BF16) "
                                                   "to read as float, got I64");
  REQUIRE_THROWS_AS(moe::io::load_olmoe<float>(ckpt, p, {2}), MissingTensorError);
  REQUIRE_THROWS_WITH(moe::io::load_olmoe<float>(ckpt, p, {2}),
                      "moe::io: file '" + dir.str("index.json") +
                          "': tensor 'block_sparse_moe.experts.0.gate_proj.weight': moe::io::load_olmoe(): expected "
                          "this tensor (prefix 'block_sparse_moe.'), but the index lists no such name; close names: "
                          "'block_sparse_moe.experts.0.w1.weight', 'block_sparse_moe.experts.0.w2.weight', "
                          "'block_sparse_moe.experts.0.w3.weight'");
  REQUIRE_THROWS_AS(ckpt.info("block_sparse_moe.gate.weigth"), MissingTensorError);
  REQUIRE_THROWS_WITH(ckpt.info("block_sparse_moe.gate.weigth"),
                      "moe::io: file '" + dir.str("index.json") +
                          "': tensor 'block_sparse_moe.gate.weigth': expected a tensor of this name, got none among "
                          "the checkpoint's 14 tensors; close names: 'block_sparse_moe.gate.weight'");
  REQUIRE(ckpt.file_name("nothing") == dir.str("index.json"));
}

// ---------------------------------------------------------------------------------------------
// Refusals of a malformed index

TEST_CASE("Every malformed index is refused naming the index and what is wrong", "[io][checkpoint][errors]") {
  const TempDir dir("bad_index");
  const SafetensorsFile whole = moe::test::in_memory(mixtral_writer("m."));
  write_shard(dir / "a.safetensors", whole, {"m.gate.weight", "m.experts.0.w1.weight"});
  const fs::path index = dir / "model.safetensors.index.json";
  const std::string at = "moe::io: file '" + index.string() + "': ";
  const auto open_with = [&](const std::string& text) {
    write_text(index, text);
    return Checkpoint::open(dir.path());
  };
  const auto refused = [&](const std::string& text, const auto& message) {
    INFO(text);
    REQUIRE_THROWS_AS(open_with(text), moe::io::Error);
    REQUIRE_THROWS_WITH(open_with(text), message);
  };

  SECTION("not JSON") {
    REQUIRE_THROWS_AS(open_with("{\"weight_map\": {"), FormatError);
    refused("{\"weight_map\": {", StartsWith(at + "index: expected JSON, got a parse error: "));
  }
  SECTION("not an object") { refused("[1, 2]", at + "index: expected a JSON object, got array [1,2]"); }
  SECTION("no weight_map") {
    refused("{\"metadata\": {\"total_size\": 4}}",
            at + "weight_map: expected an object mapping tensor names to shard files, got none");
  }
  SECTION("weight_map not an object") {
    refused("{\"weight_map\": [\"a.safetensors\"]}",
            at + "weight_map: expected an object mapping tensor names to shard files, got [\"a.safetensors\"]");
  }
  SECTION("a value that is not a string") {
    refused("{\"weight_map\": {\"m.gate.weight\": 3}}",
            at + "weight_map['m.gate.weight']: expected a shard file name (a string), got 3");
  }
  SECTION("shard paths outside the index's folder") {
    for (const std::string& path : {std::string("/etc/passwd"), std::string("../a.safetensors"),
                                    std::string("sub/../../a.safetensors"), std::string(""), std::string("."),
                                    std::string("sub/")})
      refused("{\"weight_map\": {\"m.gate.weight\": \"" + path + "\"}}",
              at + "weight_map['m.gate.weight']: expected a shard file in the index's folder (a relative path "
                   "without '..'), got '" +
                  path + "'");
  }
  SECTION("a shard file missing") {
    refused(index_json({{"m.gate.weight", "a.safetensors"}, {"m.x", "b.safetensors"}, {"m.y", "b.safetensors"}}),
            at + "shard 'b.safetensors' (weight_map['m.x']): expected a file at '" + dir.str("b.safetensors") +
                "', got none");
  }
  SECTION("the same tensor twice") {
    refused("{\"weight_map\": {\"m.gate.weight\": \"a.safetensors\", \"m.gate.weight\": \"b.safetensors\"}}",
            at + "index: expected each key once per object, got 'm.gate.weight' twice in 'weight_map'");
  }
  SECTION("invalid UTF-8 and deep nesting") {
    refused("{\"weight_map\": {\"m.\xff\": \"a.safetensors\"}}",
            at + "index: expected UTF-8 text, got an invalid byte at byte 19");
    refused("{\"metadata\": [[[[[[[[[]]]]]]]]], \"weight_map\": {}}",
            at + "index: expected JSON nested at most 8 deep, got deeper nesting at byte 20");
  }
  SECTION("a tensor listed but absent from its shard: refused when the shard is opened") {
    const Checkpoint ckpt =
        open_with(index_json({{"m.gate.weight", "a.safetensors"}, {"m.experts.0.w3.weight", "a.safetensors"}}));
    REQUIRE(ckpt.contains("m.experts.0.w3.weight"));
    REQUIRE_THROWS_AS(ckpt.info("m.gate.weight"), FormatError);
    REQUIRE_THROWS_WITH(ckpt.info("m.gate.weight"),
                        at + "weight_map['m.experts.0.w3.weight']: expected this tensor in shard 'a.safetensors', got "
                             "none among its 2 tensors");
    REQUIRE(ckpt.shards_opened() == 0);  // refused, so not kept: asking again reports it again
  }
  SECTION("a tensor in a shard that the index lists in another shard") {
    write_shard(dir / "b.safetensors", whole, {"m.experts.0.w1.weight", "m.experts.0.w3.weight"});
    const Checkpoint ckpt = open_with(index_json({{"m.gate.weight", "a.safetensors"},
                                                  {"m.experts.0.w1.weight", "a.safetensors"},
                                                  {"m.experts.0.w3.weight", "b.safetensors"}}));
    REQUIRE(ckpt.read<float>("m.gate.weight") == whole.read<float>("m.gate.weight"));
    REQUIRE_THROWS_AS(ckpt.info("m.experts.0.w3.weight"), FormatError);
    REQUIRE_THROWS_WITH(ckpt.info("m.experts.0.w3.weight"),
                        at + "shard 'b.safetensors': tensor 'm.experts.0.w1.weight': expected only tensors the "
                             "weight_map lists in this shard, got one it lists in 'a.safetensors'");
  }
  SECTION("a tensor in a shard that the index does not list is ignored") {
    const Checkpoint ckpt = open_with(index_json({{"m.gate.weight", "a.safetensors"}}));
    REQUIRE(ckpt.names() == std::vector<std::string>{"m.gate.weight"});
    REQUIRE(ckpt.read<float>("m.gate.weight") == whole.read<float>("m.gate.weight"));
    REQUIRE(ckpt.file("m.gate.weight").contains("m.experts.0.w1.weight"));
    REQUIRE(!ckpt.contains("m.experts.0.w1.weight"));
    REQUIRE_THROWS_AS(ckpt.info("m.experts.0.w1.weight"), MissingTensorError);
  }
  SECTION("an empty weight_map is an empty checkpoint") {
    const Checkpoint ckpt = open_with("{\"weight_map\": {}}");
    REQUIRE(ckpt.size() == 0);
    REQUIRE(ckpt.num_shards() == 0);
    REQUIRE_THROWS_WITH(moe::io::load_mixtral<float>(ckpt, "m.", {2}),
                        at + "tensor 'm.gate.weight': moe::io::load_mixtral(): expected this tensor (prefix 'm.'), but "
                             "the index lists no such name");
  }
}

TEST_CASE("Every truncation of a valid index is refused with a moe::io error or opens", "[io][checkpoint][errors]") {
  const TempDir dir("truncated");
  const SafetensorsFile whole = moe::test::in_memory(mixtral_writer("m."));
  write_shard(dir / "a.safetensors", whole, whole.names());
  std::map<std::string, std::string> map;
  for (const auto& name : whole.names()) map[name] = "a.safetensors";
  const std::string text = index_json(map);
  std::size_t opened = 0;
  for (std::size_t n = 0; n <= text.size(); ++n) {
    write_text(dir / "i.json", text.substr(0, n));
    try {
      const Checkpoint ckpt = Checkpoint::open(dir / "i.json");
      (void)moe::io::load_mixtral<float>(ckpt, "m.", {2});
      ++opened;
    } catch (const moe::io::Error&) {
    }
  }
  REQUIRE(opened == 1);  // the whole text
}

// ---------------------------------------------------------------------------------------------
// Opening, and a single file

TEST_CASE("Checkpoint::open takes a file, an index, or a folder holding either", "[io][checkpoint]") {
  const TempDir dir("open");
  const SafetensorsWriter w = mixtral_writer("m.");
  w.save(dir / "model.safetensors");
  const Checkpoint by_folder = Checkpoint::open(dir.path());
  REQUIRE(!by_folder.is_sharded());
  REQUIRE(by_folder.display_name() == dir.str("model.safetensors"));
  REQUIRE(by_folder.num_shards() == 1);
  REQUIRE(by_folder.shard_names() == std::vector<std::string>{dir.str("model.safetensors")});
  REQUIRE(by_folder.file_name("m.gate.weight") == dir.str("model.safetensors"));
  const Checkpoint by_file = Checkpoint::open(dir / "model.safetensors");
  REQUIRE(by_file.names() == by_folder.names());
  const auto a = moe::io::load_mixtral<float>(by_folder, "m.", {2});
  require_same_layer(a, moe::io::load_mixtral<float>(by_file, "m.", {2}));

  // An index beside the single file wins, as in Hugging Face's loader.
  std::map<std::string, std::string> map;
  for (const auto& name : w.names()) map[name] = "model.safetensors";
  write_text(dir / "model.safetensors.index.json", index_json(map));
  REQUIRE(Checkpoint::open(dir.path()).is_sharded());

  const TempDir empty("open_empty");
  REQUIRE_THROWS_WITH(Checkpoint::open(empty.path()),
                      "moe::io: file '" + empty.path().string() +
                          "': cannot open: expected model.safetensors.index.json or model.safetensors in this "
                          "folder, got neither");
  REQUIRE_THROWS_AS(Checkpoint::open(empty / "none.json"), moe::io::Error);
  REQUIRE_THROWS_WITH(Checkpoint::open(empty / "none.json"),
                      StartsWith("moe::io: file '" + empty.str("none.json") + "': cannot open"));
  REQUIRE_THROWS_WITH(Checkpoint::open(empty / "none.safetensors"),
                      StartsWith("moe::io: file '" + empty.str("none.safetensors") + "': cannot open"));
}

TEST_CASE("A SafetensorsFile converts to a Checkpoint: borrowed from an lvalue, owned from an rvalue",
          "[io][checkpoint]") {
  const SafetensorsFile f = moe::test::in_memory(mixtral_writer("m."), "one.safetensors");
  const Checkpoint view = f;
  REQUIRE(&view.file("m.gate.weight") == &f);
  REQUIRE(&view.file("anything") == &f);  // a single file answers for every name; its info() refuses
  REQUIRE(view.display_name() == "one.safetensors");
  REQUIRE(view.contains("m.gate.weight"));
  REQUIRE(view.size() == f.size());
  REQUIRE(view.close_names("m.gate.weigth") == f.close_names("m.gate.weigth"));
  REQUIRE(view.read_matrix<double>("m.gate.weight", E, D) == f.read_matrix<double>("m.gate.weight", E, D));
  const std::vector<std::int64_t> shape = {FF, D};
  REQUIRE(view.read<float>("m.experts.0.w1.weight", shape) == f.read<float>("m.experts.0.w1.weight"));
  REQUIRE_THROWS_AS(view.read_vector<float>("m.gate.weight", E * D), TensorMismatchError);
  REQUIRE(view.read_rows<float>("m.experts.0.w1.weight", -1, D).rows() == FF);
  REQUIRE(view.raw("m.gate.weight").size() == static_cast<std::size_t>(E * D * 4));
  REQUIRE_THROWS_WITH(view.info("m.gate.weigth"), StartsWith("moe::io: file 'one.safetensors': tensor 'm.gate.weigth': "
                                                             "expected a tensor of this name, got none among the "
                                                             "file's 13 tensors"));
  const Checkpoint owned = moe::test::in_memory(mixtral_writer("m."), "owned.safetensors");
  const Checkpoint copy = owned;  // copies share the file
  REQUIRE(&copy.file("m.gate.weight") == &owned.file("m.gate.weight"));
  require_same_layer(moe::io::load_mixtral<float>(f, "m.", {2}), moe::io::load_mixtral<float>(copy, "m.", {2}));
}

}  // namespace moe_checkpoint_test
