// What the fuzz targets do with one input, shared with tests/io/fuzz_regression_test.cpp so
// every checked-in seed and every past crash is replayed by the ordinary test suite too.
//
// The documented refusals (moe::io::Error and its subclasses, std::invalid_argument) are
// caught here. Anything else escapes: under libFuzzer an uncaught exception aborts and is
// reported as a crash, like a sanitizer report; in the test it fails REQUIRE_NOTHROW. Broken
// invariants (a read returning the wrong element count, a loaded layer whose forward gives the
// wrong shape) throw FuzzFinding.
#ifndef MOE_TESTS_FUZZ_FUZZ_HARNESS_HPP
#define MOE_TESTS_FUZZ_FUZZ_HARNESS_HPP

#include <moe/io/conv_loader.hpp>
#include <moe/io/hf_loader.hpp>
#include <moe/io/low_rank_loader.hpp>
#include <moe/io/multi_head_loader.hpp>
#include <moe/io/recurrent_loader.hpp>
#include <moe/io/routing_loaders.hpp>
#include <moe/io/routing_tape_io.hpp>
#include <moe/io/safetensors.hpp>
#include <moe/io/soft_moe_loader.hpp>
#include <moe/io/switch_loader.hpp>
#include <moe/moe.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace moe::fuzz {

/// An invariant the library promises, found broken. Not caught by the harness.
struct FuzzFinding : std::logic_error {
  using std::logic_error::logic_error;
};

namespace detail {

template <class S>
void read_all_ways(const io::SafetensorsFile& f, const io::TensorInfo& t) {
  try {
    const std::vector<S> v = f.read<S>(t.name);
    if (v.size() != static_cast<std::size_t>(t.numel()))
      throw FuzzFinding("read<S>() returned " + std::to_string(v.size()) + " elements for '" + t.name + "'");
  } catch (const io::Error&) {
  }
  try {
    (void)f.read<S>(t.name, t.shape);
  } catch (const io::Error&) {
  }
  try {
    if (t.shape.size() == 2) (void)f.read_matrix<S>(t.name, t.shape[0], t.shape[1]);
    if (t.shape.size() == 1) (void)f.read_vector<S>(t.name, t.shape[0]);
    if (!t.shape.empty()) (void)f.read_rows<S>(t.name, -1, t.shape.back());
  } catch (const io::Error&) {
  } catch (const std::invalid_argument&) {
  }
}

// Loaded sizes come from the file: skip the forward of a layer too big to be quick, so the
// fuzzer spends its time on parsing rather than GEMMs.
template <class Layer>
void run_small(const Layer& layer, const ForwardContext& ctx = {}) {
  const Index d = layer.input_dim();
  if (d > 256 || layer.num_experts() > 64) return;
  RowMatrix<float> x(3, d);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = 0.25f * static_cast<float>(i % 7) - 0.5f;
  typename Layer::workspace_type ws;
  const RowMatrix<float> y = layer.forward(x, ws, ctx);
  if (y.rows() != 3 || y.cols() != layer.output_dim()) throw FuzzFinding("a loaded layer's forward gave the wrong shape");
}

inline void load_one(std::uint8_t which, const io::SafetensorsFile& f) {
  using namespace moe::io;
  switch (which % 20) {
    case 0: run_small(load_mixtral<float>(f, "block_sparse_moe.", MixtralConfig{2})); break;
    case 1: run_small(load_olmoe<float>(f, "mlp.", OlmoeConfig{2, false})); break;
    case 2: run_small(load_qwen2_moe<float>(f, "mlp.", Qwen2MoeConfig{2, false})); break;
    case 3: {
      DeepSeekV3Config c;
      c.top_k = 2;
      c.n_group = 2;
      c.topk_group = 1;
      run_small(load_deepseek_v3<float>(f, "mlp.", c));
      break;
    }
    case 4: run_small(load_gpt_oss<float>(f, "mlp.", GptOssConfig{2})); break;
    case 5: run_small(load_switch_transformers<float>(f, "mlp.", SwitchConfig{Capacity::fixed(2)})); break;
    case 6: run_small(load_soft_moe<float>(f, "soft_moe.", SoftMoeConfig{1})); break;
    case 7: {
      ForwardContext ctx;
      ctx.mode = Mode::training;
      ctx.seed = 7;
      run_small(load_noisy_top_k<float>(f, "moe.", NoisyTopKConfig{2}), ctx);
      break;
    }
    case 8: run_small(load_expert_choice<float>(f, "moe.", ExpertChoiceConfig{2.0})); break;
    case 9: {
      const auto layer = load_hash<float>(f, "moe.");
      const std::int64_t ids[3] = {0, 1, 2};
      ForwardContext ctx;
      ctx.token_ids = ids;
      run_small(layer, ctx);  // an id beyond a short table is the router's invalid_argument
      break;
    }
    case 10: {
      // M inferred from the file's table; the three tokens take the first, the last and a
      // middle modality, so every id is valid and the mask differs between them.
      const auto layer = load_modality_experts<float>(f, "moe.", ModalityConfig{2});
      const std::int64_t M = layer.router().num_modalities();
      const std::int64_t ids[3] = {0, M - 1, (M - 1) / 2};
      ForwardContext ctx;
      ctx.modality_ids = ids;
      run_small(layer, ctx);
      break;
    }
    case 11: run_small(load_domain_aware<float>(f, "moe.", DomainAwareConfig{2})); break;
    case 12: {
      // N counted from the file's task routers; the three tokens take the first, the last and a
      // middle task, so every id is valid.
      const auto layer = load_task_aware<float>(f, "moe.", TaskAwareConfig{2});
      const std::int64_t N = layer.router().num_tasks();
      const std::int64_t ids[3] = {0, N - 1, (N - 1) / 2};
      ForwardContext ctx;
      ctx.task_ids = ids;
      run_small(layer, ctx);
      break;
    }
    case 13: run_small(load_top_p<float>(f, "moe.", TopPConfig{0.5, 2})); break;
    case 14: run_small(load_threshold_skip<float>(f, "moe.", ThresholdSkipConfig{0.5, 2})); break;
    case 15: run_small(load_low_rank<float>(f, "moe.", LowRankConfig{2, true, 4.0, false})); break;
    case 16: run_small(load_hierarchical<float>(f, "moe.", HierarchicalConfig{2, 1, true})); break;
    case 17: run_small(load_conv_experts<float>(f, "moe.", ConvConfig{2, true})); break;
    case 18: run_small(load_multi_head<float>(f, "moe.", MultiHeadConfig{0, 2, true})); break;
    default: run_small(load_recurrent<float>(f, "moe.", RecurrentConfig{2, true})); break;  // 3 rows: one sequence
  }
}

inline std::vector<std::byte> to_bytes(const std::uint8_t* data, std::size_t size) {
  std::vector<std::byte> bytes(size);
  if (size != 0) std::memcpy(bytes.data(), data, size);
  return bytes;
}

}  // namespace detail

/// fuzz_safetensors: parse, then read every tensor as float, double and int64 through every
/// reader, touch every raw byte, look up metadata and a missing name, and read it as a routing tape.
inline void exercise_reader(const std::uint8_t* data, std::size_t size) {
  try {
    const auto f = io::SafetensorsFile::from_bytes(detail::to_bytes(data, size), "fuzz.safetensors");
    for (const std::string& name : f.names()) {
      const io::TensorInfo& t = f.info(name);
      const auto raw = f.raw(name);
      if (raw.size() != t.nbytes()) throw FuzzFinding("raw() size differs from nbytes() for '" + name + "'");
      unsigned sum = 0;
      for (std::byte b : raw) sum += static_cast<unsigned>(b);  // ASan checks every byte is in bounds
      if (sum == ~0u) throw FuzzFinding("unreachable");
      detail::read_all_ways<float>(f, t);
      detail::read_all_ways<double>(f, t);
      detail::read_all_ways<std::int64_t>(f, t);
    }
    for (const auto& [key, value] : f.metadata())
      if (f.metadata(key) != value) throw FuzzFinding("metadata(key) disagrees with metadata()");
    try {
      (void)f.info("block_sparse_moe.gate.weigth");  // the close-names path
    } catch (const io::MissingTensorError&) {
    }
    // The routing tape reader (docs/replay.md#files): every record it returns is valid.
    const RoutingTape tape = io::read_routing_tape(f);
    for (const RoutingRecord& r : tape.records()) r.validate("fuzz: a record read_routing_tape returned");
  } catch (const io::Error&) {
  } catch (const std::invalid_argument&) {
  }
}

/// fuzz_loaders: the first byte picks the loader (so one corpus serves all twelve and mutations
/// move files between families), the rest is the file. A loaded layer runs one forward.
inline void exercise_loaders(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return;
  try {
    const auto f = io::SafetensorsFile::from_bytes(detail::to_bytes(data + 1, size - 1), "fuzz.safetensors");
    detail::load_one(data[0], f);
  } catch (const io::Error&) {
  } catch (const std::invalid_argument&) {
  }
}

}  // namespace moe::fuzz

#endif  // MOE_TESTS_FUZZ_FUZZ_HARNESS_HPP
