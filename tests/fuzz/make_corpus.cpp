// Writes the seed corpus of the fuzz targets (checked in under tests/fuzz/corpus/; rerun with
// scripts/fuzz.sh --regen-corpus after changing a layout). Seeds are small valid files of every
// loader family and every dtype, plus hand-made malformed variants, one per validation rule, so
// the fuzzer starts next to each branch of the reader instead of having to find it.
#include <moe/io/routing_tape_io.hpp>
#include <moe/io/safetensors.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

namespace {

using moe::io::DType;
using moe::io::SafetensorsWriter;
using Bytes = std::vector<std::byte>;

void put(SafetensorsWriter& w, const std::string& name, std::vector<std::int64_t> shape, float scale = 0.05f) {
  std::int64_t n = 1;
  for (auto s : shape) n *= s;
  std::vector<float> v(static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = scale * static_cast<float>(static_cast<int>(i % 11) - 5);
  w.add<float>(name, std::move(shape), std::span<const float>(v));
}

void swiglu(SafetensorsWriter& w, const std::string& p, int E, int d, int ff, const char* g, const char* u,
            const char* dn) {
  for (int e = 0; e < E; ++e) {
    const std::string q = p + std::to_string(e) + ".";
    put(w, q + g, {ff, d});
    put(w, q + u, {ff, d});
    put(w, q + dn, {d, ff});
  }
}

constexpr int E = 4, D = 4, FF = 3;

SafetensorsWriter mixtral() {
  SafetensorsWriter w;
  put(w, "block_sparse_moe.gate.weight", {E, D});
  swiglu(w, "block_sparse_moe.experts.", E, D, FF, "w1.weight", "w3.weight", "w2.weight");
  return w;
}
SafetensorsWriter olmoe() {
  SafetensorsWriter w;
  put(w, "mlp.gate.weight", {E, D});
  swiglu(w, "mlp.experts.", E, D, FF, "gate_proj.weight", "up_proj.weight", "down_proj.weight");
  return w;
}
SafetensorsWriter qwen2() {
  SafetensorsWriter w = olmoe();
  put(w, "mlp.shared_expert.gate_proj.weight", {5, D});
  put(w, "mlp.shared_expert.up_proj.weight", {5, D});
  put(w, "mlp.shared_expert.down_proj.weight", {D, 5});
  put(w, "mlp.shared_expert_gate.weight", {1, D});
  return w;
}
SafetensorsWriter deepseek() {
  SafetensorsWriter w = olmoe();
  put(w, "mlp.gate.e_score_correction_bias", {E});
  put(w, "mlp.shared_experts.gate_proj.weight", {5, D});
  put(w, "mlp.shared_experts.up_proj.weight", {5, D});
  put(w, "mlp.shared_experts.down_proj.weight", {D, 5});
  return w;
}
SafetensorsWriter gpt_oss() {
  SafetensorsWriter w;
  put(w, "mlp.router.weight", {E, D});
  put(w, "mlp.router.bias", {E});
  put(w, "mlp.experts.gate_up_proj", {E, D, 2 * FF});
  put(w, "mlp.experts.gate_up_proj_bias", {E, 2 * FF});
  put(w, "mlp.experts.down_proj", {E, FF, D});
  put(w, "mlp.experts.down_proj_bias", {E, D});
  return w;
}
SafetensorsWriter switch_t() {
  SafetensorsWriter w;
  put(w, "mlp.router.classifier.weight", {E, D});
  for (int e = 0; e < E; ++e) {
    put(w, "mlp.experts.expert_" + std::to_string(e) + ".wi.weight", {FF, D});
    put(w, "mlp.experts.expert_" + std::to_string(e) + ".wo.weight", {D, FF});
  }
  return w;
}
SafetensorsWriter soft_moe() {
  SafetensorsWriter w;
  put(w, "soft_moe.phi", {D, E});
  for (int e = 0; e < E; ++e) {
    put(w, "soft_moe.experts." + std::to_string(e) + ".wi.weight", {FF, D});
    put(w, "soft_moe.experts." + std::to_string(e) + ".wo.weight", {D, FF});
  }
  return w;
}
SafetensorsWriter moe_layout(bool noise, bool hash) {
  SafetensorsWriter w;
  put(w, "moe.gate.weight", {E, D});
  if (noise) put(w, "moe.noise.weight", {E, D});
  swiglu(w, "moe.experts.", E, D, FF, "w1.weight", "w3.weight", "w2.weight");
  if (hash) {
    std::vector<std::int64_t> table{0, 1, 2, 3, 3, 2, 1, 0};
    w.add<std::int64_t>("moe.hash_table", {8}, std::span<const std::int64_t>(table));
  }
  return w;
}
/// Modality experts: one expert each for modalities 0 and 1, two cross-modal (-1).
SafetensorsWriter modality_experts() {
  SafetensorsWriter w = moe_layout(false, false);
  std::vector<std::int64_t> table{0, -1, 1, -1};
  w.add<std::int64_t>("moe.expert_modality", {E}, std::span<const std::int64_t>(table));
  return w;
}
/// Domain-aware: a classifier over 3 domains and their affinities [3, E].
SafetensorsWriter domain_aware() {
  SafetensorsWriter w = moe_layout(false, false);
  put(w, "moe.domain_classifier.weight", {3, D});
  put(w, "moe.domain_affinity", {3, E});
  return w;
}
/// Task-aware: two task routers [E, D] and their sensitivities [2].
SafetensorsWriter task_aware() {
  SafetensorsWriter w = moe_layout(false, false);
  put(w, "moe.task_gates.0.weight", {E, D});
  put(w, "moe.task_gates.1.weight", {E, D});
  put(w, "moe.task_sensitivity", {2});
  return w;
}

/// Low-rank experts: a base [D, D] and rank-2 factors per expert.
SafetensorsWriter low_rank() {
  SafetensorsWriter w;
  put(w, "moe.gate.weight", {E, D});
  put(w, "moe.base.weight", {D, D});
  for (int e = 0; e < E; ++e) {
    put(w, "moe.experts." + std::to_string(e) + ".lora_A.weight", {2, D});
    put(w, "moe.experts." + std::to_string(e) + ".lora_B.weight", {D, 2});
  }
  return w;
}

/// Hierarchical: 2 groups of 2 experts, a primary router [2, D] and one [2, D] per group.
SafetensorsWriter hierarchical() {
  SafetensorsWriter w;
  put(w, "moe.gate.weight", {2, D});
  swiglu(w, "moe.experts.", E, D, FF, "w1.weight", "w3.weight", "w2.weight");
  put(w, "moe.group_gates.0.weight", {2, D});
  put(w, "moe.group_gates.1.weight", {2, D});
  return w;
}

/// Convolutional experts: kernels of 3 taps [3, D] before SwiGLU.
SafetensorsWriter conv_expert() {
  SafetensorsWriter w = moe_layout(false, false);
  for (int e = 0; e < E; ++e) put(w, "moe.experts." + std::to_string(e) + ".conv.weight", {3, D});
  return w;
}

/// Multi-head: 2 heads of D/2, SwiGLU experts of width D/2, the two projections [D, D].
SafetensorsWriter multi_head() {
  SafetensorsWriter w;
  put(w, "moe.head_proj.weight", {D, D});
  put(w, "moe.gate.weight", {E, D / 2});
  swiglu(w, "moe.experts.", E, D / 2, FF, "w1.weight", "w3.weight", "w2.weight");
  put(w, "moe.merge_proj.weight", {D, D});
  return w;
}

/// Recurrent experts: GRUs with hidden size D (weight_ih, weight_hh [3D, D], biases [3D]).
SafetensorsWriter recurrent_expert() {
  SafetensorsWriter w;
  put(w, "moe.gate.weight", {E, D});
  for (int e = 0; e < E; ++e) {
    const std::string q = "moe.experts." + std::to_string(e) + ".";
    put(w, q + "weight_ih", {3 * D, D});
    put(w, q + "weight_hh", {3 * D, D});
    put(w, q + "bias_ih", {3 * D});
    put(w, q + "bias_hh", {3 * D});
  }
  return w;
}

/// Every dtype once, with a few metadata keys: the reader's conversion paths.
SafetensorsWriter all_dtypes() {
  SafetensorsWriter w;
  w.metadata("format", "pt").metadata("d_model", "4").metadata("caf\xc3\xa9", "\xe2\x82\xac");
  put(w, "f32", {2, 3});
  std::vector<double> d{1.0, -2.5, 1e300, -0.0};
  w.add<double>("f64", {2, 2}, std::span<const double>(d));
  std::vector<std::int64_t> i{-1, 0, 1, 1LL << 62};
  w.add<std::int64_t>("i64", {4}, std::span<const std::int64_t>(i));
  const auto raw = [&](const char* name, DType t, std::vector<std::int64_t> shape, std::size_t nbytes) {
    Bytes b(nbytes);
    for (std::size_t k = 0; k < nbytes; ++k) b[k] = std::byte(static_cast<unsigned char>(k * 37 + 11));
    w.add_raw(name, t, std::move(shape), std::move(b));
  };
  raw("f16", DType::F16, {3}, 6);
  raw("bf16", DType::BF16, {1, 3}, 6);
  raw("i32", DType::I32, {2}, 8);
  raw("i16", DType::I16, {2}, 4);
  raw("i8", DType::I8, {3}, 3);
  raw("u8", DType::U8, {3}, 3);
  raw("u16", DType::U16, {2}, 4);
  raw("u32", DType::U32, {2}, 8);
  raw("u64", DType::U64, {1}, 8);
  raw("bool", DType::BOOL, {2}, 2);
  raw("f8", DType::F8_E4M3, {2}, 2);
  raw("f8e5", DType::F8_E5M2, {2}, 2);
  raw("f8e8", DType::F8_E8M0, {2}, 2);
  raw("f6", DType::F6_E2M3, {4}, 3);
  raw("f4", DType::F4, {2}, 1);
  raw("empty", DType::F32, {0, 5}, 0);
  raw("scalar", DType::F32, {}, 4);
  return w;
}

Bytes bytes_of(const std::string& s) {
  Bytes b(s.size());
  std::memcpy(b.data(), s.data(), s.size());
  return b;
}

/// A file from a header text (length field right unless given) and n data bytes.
Bytes file(const std::string& header, std::size_t data = 0, std::uint64_t length = ~std::uint64_t{0}) {
  Bytes out(8);
  const std::uint64_t len = length == ~std::uint64_t{0} ? header.size() : length;
  std::memcpy(out.data(), &len, 8);
  const Bytes h = bytes_of(header);
  out.insert(out.end(), h.begin(), h.end());
  out.resize(out.size() + data, std::byte{0x3f});
  return out;
}

void save(const std::filesystem::path& path, const Bytes& b) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: make_corpus <tests/fuzz/corpus>\n";
    return 2;
  }
  const std::filesystem::path root = argv[1];
  const auto reader = root / "fuzz_safetensors";
  const auto loaders = root / "fuzz_loaders";
  std::filesystem::create_directories(reader);
  std::filesystem::create_directories(loaders);

  // Loader seeds: the first byte picks the loader (fuzz_loaders.cpp), the rest is the file.
  const std::vector<std::pair<const char*, SafetensorsWriter>> families = {
      {"mixtral", mixtral()},   {"olmoe", olmoe()},       {"qwen2_moe", qwen2()},
      {"deepseek_v3", deepseek()}, {"gpt_oss", gpt_oss()}, {"switch", switch_t()},
      {"soft_moe", soft_moe()}, {"noisy_top_k", moe_layout(true, false)},
      {"expert_choice", moe_layout(false, false)}, {"hash", moe_layout(false, true)},
      {"modality_experts", modality_experts()}, {"domain_aware", domain_aware()},
      {"task_aware", task_aware()}, {"top_p", moe_layout(false, false)},
      {"threshold_skip", moe_layout(false, false)}, {"low_rank", low_rank()}, {"hierarchical", hierarchical()},
      {"conv_expert", conv_expert()}, {"multi_head", multi_head()}, {"recurrent_expert", recurrent_expert()}};
  for (std::size_t i = 0; i < families.size(); ++i) {
    Bytes b = families[i].second.to_bytes();
    save(reader / (std::string("valid_") + families[i].first), b);
    b.insert(b.begin(), std::byte(static_cast<unsigned char>(i)));
    save(loaders / (std::string(families[i].first)), b);
    // The same file offered to the next family: the wrong-family paths.
    b[0] = std::byte(static_cast<unsigned char>((i + 1) % families.size()));
    save(loaders / (std::string(families[i].first) + "_as_next"), b);
  }

  // Routing tapes (docs/replay.md#files): one valid tape of two records (fixed and variable k),
  // and one record that breaks the capacity rule, which the reader must refuse.
  {
    moe::RoutingRecord fixed;
    fixed.num_tokens = 3;
    fixed.num_experts = 4;
    fixed.k = 2;
    fixed.capacity = 2;
    fixed.token = {0, 0, 1, 1, 2, 2};
    fixed.expert = {1, 3, 1, 0, 1, 2};
    fixed.gate = {0.75, 0.25, 0.5, 0.5, 0.125, 0.875};
    fixed.kept = {1, 1, 1, 1, 0, 1};
    moe::RoutingRecord variable = fixed;
    variable.layer_index = 1;
    variable.k = 0;
    variable.capacity = -1;
    variable.token = {0, 1, 1, 2};
    variable.expert = {2, 0, 3, 1};
    variable.gate = {1.0, 0.6, 0.4, 1.0};
    variable.kept = {1, 1, 1, 1};
    moe::RoutingTape tape;
    tape.append(fixed);
    tape.append(variable);
    save(reader / "valid_routing_tape", moe::io::routing_tape_writer(tape).to_bytes());
    moe::RoutingTape over;
    fixed.capacity = 1;
    fixed.kept = {1, 1, 0, 1, 0, 1};
    over.append(fixed);
    Bytes b = moe::io::routing_tape_writer(over).to_bytes();
    // kept[2] = 1 pushes expert 1 past capacity 1: flip it in the U8 tensor (the last byte of
    // "tape.0.kept", found by its content, the only 1,1,0,1,0,1 run in the file).
    const Bytes run{std::byte{1}, std::byte{1}, std::byte{0}, std::byte{1}, std::byte{0}, std::byte{1}};
    auto it = std::search(b.begin(), b.end(), run.begin(), run.end());
    if (it != b.end()) *(it + 2) = std::byte{1};
    save(reader / "valid_routing_tape_over_capacity", b);  // valid safetensors, not a valid tape
  }

  const Bytes valid = all_dtypes().to_bytes();
  save(reader / "valid_all_dtypes", valid);
  save(reader / "valid_empty_header", file("{}"));
  save(reader / "valid_metadata_only", file(R"({"__metadata__":{"a":"b"}})"));

  // Truncations of a valid file: inside the length field, inside the header, inside the data.
  for (std::size_t cut : {std::size_t{0}, std::size_t{5}, std::size_t{8}, std::size_t{40}, valid.size() - 1})
    save(reader / ("truncated_" + std::to_string(cut)), Bytes(valid.begin(), valid.begin() + static_cast<long>(cut)));

  const std::string f32 = R"("dtype":"F32","shape":[2],"data_offsets":)";
  const std::vector<std::pair<const char*, Bytes>> bad = {
      {"header_len_beyond_file", file(R"({"a":{)" + f32 + "[0,8]}}", 8, 1000)},
      {"header_len_huge", file("{}", 0, std::uint64_t{1} << 62)},
      {"offsets_out_of_range", file(R"({"a":{)" + f32 + "[0,8]}}", 4)},
      {"offsets_reversed", file(R"({"a":{)" + f32 + "[8,0]}}", 8)},
      {"offsets_overlap", file(R"({"a":{)" + f32 + R"([0,8]},"b":{)" + f32 + "[4,12]}}", 12)},
      {"offsets_three", file(R"({"a":{)" + f32 + "[0,4,8]}}", 8)},
      {"offsets_negative", file(R"({"a":{)" + f32 + "[-8,0]}}", 8)},
      {"offsets_huge", file(R"({"a":{)" + f32 + "[18446744073709551608,18446744073709551615]}}", 8)},
      {"bytes_mismatch", file(R"({"a":{)" + f32 + "[0,6]}}", 8)},
      {"dtype_unknown", file(R"({"a":{"dtype":"F128","shape":[2],"data_offsets":[0,8]}})", 8)},
      {"dtype_number", file(R"({"a":{"dtype":32,"shape":[2],"data_offsets":[0,8]}})", 8)},
      {"shape_overflow", file(R"({"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8)},
      {"shape_overflow_zero",
       file(R"({"a":{"dtype":"F32","shape":[9223372036854775807,2,0],"data_offsets":[0,0]}})", 0)},
      {"shape_bytes_overflow", file(R"({"a":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,8]}})", 8)},
      {"shape_float", file(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", 8)},
      {"shape_string", file(R"({"a":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", 8)},
      {"shape_packed_odd", file(R"({"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}})", 2)},
      {"not_json", file("this is not json at all", 8)},
      {"json_array", file("[1,2,3]")},
      {"json_truncated", file(R"({"a":{"dtype":"F32","sha)")},
      {"deeply_nested", file(std::string(4000, '[') + std::string(4000, ']'))},
      {"valid_brackets_in_string", file(R"({"__metadata__":{"k":"[[[[[[[[[[[[[["}})")},
      {"duplicate_tensor", file(R"({"a":{)" + f32 + R"([0,8]},"a":{)" + f32 + "[8,16]}}", 16)},
      {"duplicate_field", file(R"({"a":{"dtype":"F32","dtype":"F64","shape":[2],"data_offsets":[0,8]}})", 8)},
      {"non_utf8_name", file("{\"\xff\xfe\":{" + f32 + "[0,8]}}", 8)},
      {"overlong_utf8", file("{\"\xc0\xaf\":{" + f32 + "[0,8]}}", 8)},
      {"surrogate_utf8", file("{\"\xed\xa0\x80\":{" + f32 + "[0,8]}}", 8)},
      {"escaped_surrogate", file(R"({"\ud800":{)" + f32 + "[0,8]}}", 8)},
      {"metadata_not_strings", file(R"({"__metadata__":{"a":1}})")},
      {"metadata_array", file(R"({"__metadata__":[]})")},
      {"entry_not_object", file(R"({"a":[1,2]})")},
      {"missing_field", file(R"({"a":{"dtype":"F32","shape":[2]}})", 8)},
      {"big_numbers", file(R"({"__metadata__":{"a":"1"},"x":1e999,"y":-1e999})")},
  };
  for (const auto& [name, b] : bad) save(reader / name, b);
  std::cout << "wrote " << families.size() * 3 + 3 + 5 + bad.size() << " seeds under " << root << "\n";
  return 0;
}
