// Writes the seed corpus of the fuzz targets (checked in under tests/fuzz/corpus/; rerun with
// scripts/fuzz.sh --regen-corpus after changing a layout). Seeds are small valid files of every
// loader family and every dtype, plus hand-made malformed variants, one per validation rule, so
// the fuzzer starts next to each branch of the reader instead of having to find it.
#include <moe/io/gguf.hpp>
#include <moe/io/routing_tape_io.hpp>
#include <moe/io/safetensors.hpp>

#include "../support/gguf_file.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
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

// ---------------------------------------------------------------------------------------------
// GGUF seeds (fuzz_gguf): valid files of every metadata type, tensor type and layout option,
// and one hand-corrupted file per validation rule (docs/gguf.md#validation).

using moe::io::GgmlType;
using moe::io::GgufWriter;
using moe::test::GgufBytes;

std::vector<float> ramp(std::size_t n, float scale) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = scale * static_cast<float>(static_cast<int>((i * 7) % 23) - 11);
  return v;
}

/// Every metadata type (scalar and array) and every tensor type the reader converts, plus a
/// raw Q6_K and I32 tensor.
GgufWriter gguf_all_types() {
  GgufWriter w;
  w.set("general.architecture", "qwen2moe").set("general.name", "caf\xc3\xa9");
  w.set("t.u8", std::uint8_t{7}).set("t.i8", std::int8_t{-7}).set("t.u16", std::uint16_t{700});
  w.set("t.i16", std::int16_t{-700}).set("t.u32", std::uint32_t{70000}).set("t.i32", std::int32_t{-70000});
  w.set("t.f32", 0.5f).set("t.bool", true).set("t.u64", std::uint64_t{1} << 63).set("t.i64", std::int64_t{-1});
  w.set("t.f64", 1e-300);
  w.set_array("a.u8", std::vector<std::uint8_t>{1, 2}).set_array("a.i8", std::vector<std::int8_t>{-1});
  w.set_array("a.u16", std::vector<std::uint16_t>{3}).set_array("a.i16", std::vector<std::int16_t>{-3});
  w.set_array("a.u32", std::vector<std::uint32_t>{4, 5}).set_array("a.i32", std::vector<std::int32_t>{-4});
  w.set_array("a.f32", std::vector<float>{0.25f}).set_array("a.bool", std::vector<bool>{true, false});
  w.set_array("a.string", std::vector<std::string>{"a", "", "bc"}).set_array("a.u64", std::vector<std::uint64_t>{9});
  w.set_array("a.i64", std::vector<std::int64_t>{-9}).set_array("a.f64", std::vector<double>{2.5});
  w.set_array("a.empty", std::vector<float>{});
  const std::vector<float> v = ramp(256 * 2, 0.125f);
  const std::span<const float> s(v);
  w.add_tensor("f32", GgmlType::F32, {32, 2}, s.first(64));
  w.add_tensor("f16", GgmlType::F16, {32, 1, 2}, s.first(64));
  w.add_tensor("bf16", GgmlType::BF16, {16, 2, 1, 2}, s.first(64));
  w.add_tensor("q8_0", GgmlType::Q8_0, {64, 2}, s.first(128));
  w.add_tensor("q4_0", GgmlType::Q4_0, {32, 4}, s.first(128));
  w.add_tensor("q4_k", GgmlType::Q4_K, {256, 2}, s);
  w.add_tensor("q6_k", GgmlType::Q6_K, {256}, Bytes(210, std::byte{0x11}));
  w.add_tensor("i32", GgmlType::I32, {3}, Bytes(12, std::byte{0x01}));
  return w;
}

/// The MoE tensors and keys of one block of a llama.cpp qwen2moe file, small.
GgufWriter gguf_moe_block() {
  GgufWriter w;
  w.set("general.architecture", "qwen2moe").set("qwen2moe.expert_count", std::uint32_t{4});
  w.set("qwen2moe.expert_used_count", std::uint32_t{2}).set("qwen2moe.embedding_length", std::uint32_t{32});
  w.set("general.alignment", std::uint32_t{64});
  const std::vector<float> v = ramp(32 * 64 * 4, 0.01f);
  const std::span<const float> s(v);
  w.add_tensor("blk.0.ffn_gate_inp.weight", GgmlType::F32, {32, 4}, s.first(128));
  w.add_tensor("blk.0.ffn_gate_exps.weight", GgmlType::Q8_0, {32, 64, 4}, s);
  w.add_tensor("blk.0.ffn_up_exps.weight", GgmlType::Q4_0, {32, 64, 4}, s);
  w.add_tensor("blk.0.ffn_down_exps.weight", GgmlType::Q4_K, {256, 8, 4}, s.first(256 * 32));
  w.add_tensor("blk.0.ffn_gate_shexp.weight", GgmlType::BF16, {32, 8}, s.first(256));
  return w;
}

/// One F32 tensor "w" ne [4, 2] at offset 0 and general.architecture = "test", by hand: the
/// base the malformed seeds change one field of.
GgufBytes gguf_base() {
  GgufBytes b;
  b.header(1, 1).kv_str("general.architecture", "test").tensor("w", {4, 2}, 0, 0).pad();
  for (int i = 0; i < 8; ++i) b.put(static_cast<float>(i));
  return b;
}

Bytes gguf_with_u32(std::size_t at, std::uint32_t v) {
  Bytes b = gguf_base().bytes();
  std::memcpy(b.data() + at, &v, 4);
  return b;
}

Bytes gguf_with_u64(std::size_t at, std::uint64_t v) {
  Bytes b = gguf_base().bytes();
  std::memcpy(b.data() + at, &v, 8);
  return b;
}

/// A file with one tensor info "w" of the given dimensions and type, then 256 data bytes.
Bytes gguf_tensor(const std::vector<std::uint64_t>& ne, std::uint32_t type, std::uint64_t offset = 0) {
  GgufBytes b;
  b.header(1, 0).tensor("w", ne, type, offset).pad().fill(256, 0x3c);
  return b.bytes();
}

std::size_t gguf_seeds(const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  std::size_t n = 0;
  const auto seed = [&](const std::string& name, const Bytes& b) {
    save(dir / name, b);
    ++n;
  };
  const Bytes all = gguf_all_types().to_bytes();
  seed("valid_all_types", all);
  seed("valid_moe_block", gguf_moe_block().to_bytes());
  seed("valid_hand_built", gguf_base().bytes());
  seed("valid_version_2", gguf_with_u32(4, 2));
  {
    GgufWriter w = gguf_all_types();
    w.set("general.alignment", std::uint32_t{1});
    seed("valid_alignment_1", w.to_bytes());
    w.set("general.alignment", std::uint32_t{256});
    seed("valid_alignment_256", w.to_bytes());
  }
  {
    GgufBytes b;
    b.header(0, 0);
    seed("valid_empty", b.bytes());
    GgufBytes g;  // gaps and offsets out of file order
    g.header(2, 0).tensor("a", {8}, 0, 96).tensor("b", {8}, 1, 0).pad().fill(128, 0x3c);
    seed("valid_gaps", g.bytes());
  }

  // Truncations: inside the header, the metadata, the tensor infos, the padding, the data.
  for (const std::size_t cut : {std::size_t{0}, std::size_t{3}, std::size_t{6}, std::size_t{20}, std::size_t{50},
                                std::size_t{200}, std::size_t{700}, all.size() / 2, all.size() - 25})
    seed("truncated_" + std::to_string(cut), Bytes(all.begin(), all.begin() + static_cast<long>(std::min(cut, all.size()))));
  // Short of the last tensor's padding only: read (llama.cpp would want the padding too).
  seed("valid_without_final_padding", Bytes(all.begin(), all.end() - 1));

  seed("bad_magic", gguf_with_u32(0, 0x46554746));  // "FGUF"
  seed("version_1", gguf_with_u32(4, 1));
  seed("version_4", gguf_with_u32(4, 4));
  seed("version_big_endian", gguf_with_u32(4, 0x03000000));
  seed("tensor_count_huge", gguf_with_u64(8, std::uint64_t{1} << 62));
  seed("kv_count_huge", gguf_with_u64(16, ~std::uint64_t{0}));
  seed("key_length_huge", gguf_with_u64(24, std::uint64_t{1} << 40));
  seed("key_length_past_end", gguf_with_u64(24, 200));
  seed("value_type_13", gguf_with_u32(52, 13));
  seed("value_length_past_end", gguf_with_u64(56, 1000));
  seed("name_length_past_end", gguf_with_u64(68, 500));
  seed("n_dims_0", gguf_with_u32(77, 0));
  seed("n_dims_5", gguf_with_u32(77, 5));
  seed("ne_zero", gguf_with_u64(81, 0));
  seed("ne_negative", gguf_with_u64(89, ~std::uint64_t{0}));
  seed("type_99", gguf_with_u32(97, 99));
  seed("type_removed_4", gguf_with_u32(97, 4));
  seed("type_q4_k_short_row", gguf_with_u32(97, 12));
  seed("offset_misaligned", gguf_with_u64(101, 8));
  seed("offset_past_end", gguf_with_u64(101, 64));
  seed("offset_huge", gguf_with_u64(101, ~std::uint64_t{31}));
  {
    Bytes b = gguf_base().bytes();
    b.resize(150);
    seed("data_short", b);
    b.resize(120);
    seed("data_start_past_end", b);
  }
  const auto kv = [&](const std::string& name, const std::function<void(GgufBytes&)>& body, std::uint64_t n_kv = 1) {
    GgufBytes b;
    b.header(0, n_kv);
    body(b);
    seed(name, b.bytes());
  };
  kv("key_empty", [](GgufBytes& b) { b.str("").u32(0).u8(1); });
  kv("key_not_utf8", [](GgufBytes& b) { b.str("k\xff").u32(0).u8(1); });
  kv("key_duplicate", [](GgufBytes& b) { b.kv_u32("a", 1).kv_u32("a", 2); }, 2);
  kv("bool_2", [](GgufBytes& b) { b.str("k").u32(7).u8(2); });
  kv("bool_array_255", [](GgufBytes& b) { b.str("k").u32(9).u32(7).u64(2).u8(1).u8(255); });
  kv("array_nested", [](GgufBytes& b) { b.str("k").u32(9).u32(9).u64(1).u32(0).u64(0); });
  kv("array_element_type_13", [](GgufBytes& b) { b.str("k").u32(9).u32(13).u64(0).fill(8); });
  kv("array_length_huge", [](GgufBytes& b) { b.str("k").u32(9).u32(4).u64(std::uint64_t{1} << 61).fill(40); });
  kv("array_strings_huge", [](GgufBytes& b) { b.str("k").u32(9).u32(8).u64(std::uint64_t{1} << 60).fill(40); });
  kv("array_string_past_end", [](GgufBytes& b) { b.str("k").u32(9).u32(8).u64(2).str("x").u64(99).fill(8); });
  kv("alignment_0", [](GgufBytes& b) { b.kv_u32("general.alignment", 0); });
  kv("alignment_3", [](GgufBytes& b) { b.kv_u32("general.alignment", 3); });
  kv("alignment_i32", [](GgufBytes& b) { b.str("general.alignment").u32(5).u32(32); });
  kv("alignment_array", [](GgufBytes& b) { b.str("general.alignment").u32(9).u32(4).u64(1).u32(32); });
  {
    GgufBytes b;
    b.header(1, 1).kv_u32("general.alignment", 1u << 30).tensor("w", {8}, 0, 0).fill(64);
    seed("alignment_past_end", b.bytes());
  }
  seed("ne_overflow", gguf_tensor({std::uint64_t{1} << 32, std::uint64_t{1} << 31, 2}, 0));
  seed("bytes_overflow", gguf_tensor({std::uint64_t{1} << 62}, 28));
  seed("ne0_not_block", gguf_tensor({33}, 8));
  seed("tensor_huge", gguf_tensor({std::uint64_t{1} << 40}, 0));
  {
    GgufBytes o;
    o.header(2, 0).tensor("a", {16}, 0, 0).tensor("b", {8}, 0, 32).pad().fill(128);
    seed("tensors_overlap", o.bytes());
    GgufBytes d;
    d.header(2, 0).tensor("w", {8}, 0, 0).tensor("w", {8}, 0, 32).pad().fill(64);
    seed("tensor_name_duplicate", d.bytes());
    GgufBytes e;
    e.header(1, 0).tensor("", {8}, 0, 0).pad().fill(64);
    seed("tensor_name_empty", e.bytes());
    GgufBytes l;
    l.header(1, 0).tensor(std::string(65, 'x'), {8}, 0, 0).pad().fill(64);
    seed("tensor_name_65", l.bytes());
  }
  return n;
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
  const std::size_t gguf = gguf_seeds(root / "fuzz_gguf");
  std::cout << "wrote " << families.size() * 3 + 3 + 5 + bad.size() + gguf << " seeds under " << root << "\n";
  return 0;
}
