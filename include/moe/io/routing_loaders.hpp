// Build noisy top-k, expert-choice, hash-routed, modality, domain-aware, task-aware, top-p and
// threshold-skip layers from the own-reference ("moe.") layout of the golden cases: SwiGLU experts
// {prefix}experts.{e}.w1|w3|w2.weight, the gate {prefix}gate.weight [E, d], the noise
// projection {prefix}noise.weight [E, d], the hash table {prefix}hash_table (integer, [vocab]),
// the expert-to-modality table {prefix}expert_modality (integer, [E]), and the domain
// classifier and affinities {prefix}domain_classifier.weight [D, d], {prefix}domain_affinity [D, E],
// and the task routers {prefix}task_gates.{j}.weight [E, d] with {prefix}task_sensitivity [N].
#ifndef MOE_IO_ROUTING_LOADERS_HPP
#define MOE_IO_ROUTING_LOADERS_HPP

#include <moe/io/checkpoint.hpp>
#include <moe/io/error.hpp>
#include <moe/io/hf_loader.hpp>
#include <moe/io/safetensors.hpp>
#include <moe/router/domain_aware_router.hpp>
#include <moe/router/expert_choice_router.hpp>
#include <moe/router/hash_router.hpp>
#include <moe/router/hierarchical_router.hpp>
#include <moe/router/modality_router.hpp>
#include <moe/router/noisy_top_k_router.hpp>
#include <moe/router/task_aware_router.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moe::io {

/// Settings a "moe." file does not store as tensors.
struct NoisyTopKConfig {
  Index top_k = 2;
  double noise_epsilon = 1e-2;  ///< tensor2tensor's noise_epsilon
};
struct ExpertChoiceConfig {
  double capacity_factor = 2.0;
};
struct ModalityConfig {
  Index top_k = 2;
  bool renormalize = true;
  /// M. 0 (the default) reads it as 1 + the table's largest entry, which must then be < E;
  /// give it when the last modality has no expert of its own (only the cross-modal ones), which
  /// the table cannot show.
  Index num_modalities = 0;
};
struct DomainAwareConfig {
  Index top_k = 2;
  bool renormalize = true;
};
/// The number of tasks is not a setting: it is the count of task_gates.{j}.weight tensors.
struct TaskAwareConfig {
  Index top_k = 2;
  bool renormalize = true;
};

/// Adaptive routing (TopP, ThresholdSkip) settings, which a "moe." file keeps in its metadata.
struct TopPConfig {
  double threshold = 0.5;  ///< each token keeps experts until their probabilities reach this
  Index max_k = 4;         ///< the cap: at most this many experts per token
};
struct HierarchicalConfig {
  Index top_k_groups = 2;     ///< k1: groups kept per token
  Index top_k_per_group = 2;  ///< k2: experts kept in each kept group
  bool renormalize = true;    ///< at both levels
};
struct ThresholdSkipConfig {
  double beta = 0.5;  ///< experts below beta times the first one's probability are dropped
  Index top_k = 2;
};

namespace detail {

/// The number of experts, counted as consecutive {experts_prefix}{e}.{probe} names from 0.
inline Index count_experts(const LayerTensors& t, std::string_view experts_prefix, std::string_view probe) {
  Index n = 0;
  while (t.file().contains(t.name(std::string(experts_prefix) + std::to_string(n) + "." + std::string(probe)))) ++n;
  if (n == 0)
    t.throw_missing(t.name(std::string(experts_prefix) + "0." + std::string(probe)),
                    "expected at least one expert under this name", "the file has none");
  return n;
}

/// An integer table [n] with every entry in [lowest, bound) (lowest 0: indices; -1 also
/// admits the cross-modal marker of an expert-to-modality table).
/// `note` follows the message of an entry out of range (why the bound is what it is).
inline std::vector<Index> read_index_table(const LayerTensors& t, std::string_view suffix, Index bound,
                                           Index lowest = 0, std::string_view note = {}) {
  const std::string name = t.name(suffix);
  const Checkpoint& file = t.file();
  if (!file.contains(name)) t.throw_missing(name);
  const TensorInfo& info = file.info(name);
  if (info.dtype != DType::I64 && info.dtype != DType::I32 && info.dtype != DType::I16 && info.dtype != DType::I8 &&
      info.dtype != DType::U8)
    throw TensorMismatchError(file.file_name(name), name,
                              t.loader() + "(): expected an integer dtype (I64, I32, I16, I8, U8), got " +
                                  std::string(dtype_name(info.dtype)));
  if (info.shape.size() != 1 || info.shape[0] < 1)
    throw TensorMismatchError(file.file_name(name), name,
                              t.loader() + "(): expected a non-empty 1-D tensor, got shape " + shape_string(info.shape));
  const std::vector<std::int64_t> raw = file.read<std::int64_t>(name);
  std::vector<Index> table(raw.size());
  for (std::size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] < lowest || raw[i] >= bound)
      throw TensorMismatchError(file.file_name(name), name,
                                t.loader() + "(): expected entries in [" + std::to_string(lowest) + ", " +
                                    std::to_string(bound) + "), got " + std::to_string(raw[i]) + " at index " +
                                    std::to_string(i) + std::string(note));
    table[i] = static_cast<Index>(raw[i]);
  }
  return table;
}

}  // namespace detail

/// Noisy top-k (Shazeer et al. 2017): {prefix}gate.weight [E, d], {prefix}noise.weight [E, d],
/// {prefix}experts.{e}.w1|w3.weight [ff, d], w2.weight [d, ff].
template <class S>
NoisyTopKMoE<S> load_noisy_top_k(const Checkpoint& file, std::string_view prefix = "moe.",
                                 const NoisyTopKConfig& config = {}) {
  const std::string loader = "moe::io::load_noisy_top_k";
  detail::LayerTensors t(file, prefix, loader);
  RowMatrix<S> gate = detail::read_router_weight<S>(t, "gate.weight");
  const Index E = gate.rows();
  const Index d = gate.cols();
  RowMatrix<S> noise(E, d);
  t.template read_into<S>("noise.weight", {E, d}, noise);
  auto experts = detail::read_swiglu_bank<S>(t, "experts.", E, "w1.weight", "w3.weight", "w2.weight");
  return detail::with_loader_name(loader, [&] {
    return NoisyTopKMoE<S>(std::move(experts), NoisyTopKRouter<S>(std::move(gate), std::move(noise), config.top_k,
                                                                  static_cast<S>(config.noise_epsilon)));
  });
}

/// Expert choice (Zhou et al. 2022): {prefix}gate.weight [E, d], SwiGLU experts as above.
template <class S>
ExpertChoiceMoE<S> load_expert_choice(const Checkpoint& file, std::string_view prefix = "moe.",
                                      const ExpertChoiceConfig& config = {}) {
  const std::string loader = "moe::io::load_expert_choice";
  detail::LayerTensors t(file, prefix, loader);
  RowMatrix<S> gate = detail::read_router_weight<S>(t, "gate.weight");
  const Index E = gate.rows();
  auto experts = detail::read_swiglu_bank<S>(t, "experts.", E, "w1.weight", "w3.weight", "w2.weight");
  return detail::with_loader_name(loader, [&] {
    return ExpertChoiceMoE<S>(std::move(experts), ExpertChoiceRouter<S>(std::move(gate), config.capacity_factor));
  });
}

/// Hash routing (Roller et al. 2021): {prefix}hash_table [vocab] (integer expert indices),
/// SwiGLU experts as above; E is the number of experts in the file.
template <class S>
HashMoE<S> load_hash(const Checkpoint& file, std::string_view prefix = "moe.") {
  const std::string loader = "moe::io::load_hash";
  detail::LayerTensors t(file, prefix, loader);
  const Index E = detail::count_experts(t, "experts.", "w1.weight");
  auto experts = detail::read_swiglu_bank<S>(t, "experts.", E, "w1.weight", "w3.weight", "w2.weight");
  std::vector<Index> table = detail::read_index_table(t, "hash_table", E);
  return detail::with_loader_name(loader, [&] {
    const Index d = experts.input_dim();
    return HashMoE<S>(std::move(experts), HashRouter<S>(std::move(table), E, d));
  });
}

/// Modality experts with cross-modal ones (../shared/golden-variety, modality_experts):
/// {prefix}gate.weight [E, d], {prefix}expert_modality [E] (integer; -1 = cross-modal), SwiGLU
/// experts as above. The modality ids of the tokens come with each call (ForwardContext).
template <class S>
ModalityMoE<S> load_modality_experts(const Checkpoint& file, std::string_view prefix = "moe.",
                                     const ModalityConfig& config = {}) {
  const std::string loader = "moe::io::load_modality_experts";
  detail::LayerTensors t(file, prefix, loader);
  RowMatrix<S> gate = detail::read_router_weight<S>(t, "gate.weight");
  const Index E = gate.rows();
  auto experts = detail::read_swiglu_bank<S>(t, "experts.", E, "w1.weight", "w3.weight", "w2.weight");
  // Given, M bounds the entries. Inferred, M = 1 + the largest entry, which must be < E: a table
  // of E entries names at most E modalities, and an unbounded one would let a small file set M
  // to 2^40 (the router checks every modality's open experts, M * E steps, at construction).
  const bool inferred = config.num_modalities <= 0;
  const Index bound = inferred ? E : config.num_modalities;
  std::vector<Index> table = detail::read_index_table(
      t, "expert_modality", bound, cross_modal,
      inferred ? " (num_modalities 0 infers M = 1 + the largest entry, at most E = " + std::to_string(E) +
                     "; give ModalityConfig::num_modalities for more modalities)"
               : std::string());
  if (static_cast<Index>(table.size()) != E)
    throw TensorMismatchError(file.file_name(t.name("expert_modality")), t.name("expert_modality"),
                              loader + "(): expected one entry per expert (" + std::to_string(E) + "), got " +
                                  std::to_string(table.size()));
  const Index M = inferred ? std::max<Index>(1, 1 + *std::max_element(table.begin(), table.end()))
                           : config.num_modalities;
  return detail::with_loader_name(loader, [&] {
    return ModalityMoE<S>(std::move(experts),
                          ModalitySoftmaxTopKRouter<S>(SoftmaxTopKRouter<S>(std::move(gate), config.top_k,
                                                                            SoftmaxTopK<S>{config.renormalize}),
                                                       std::move(table), M));
  });
}

/// Domain-aware routing (../shared/golden-variety, domain_aware): {prefix}gate.weight [E, d],
/// {prefix}domain_classifier.weight [D, d], {prefix}domain_affinity [D, E], SwiGLU experts as
/// above; D is the classifier's rows.
template <class S>
DomainAwareMoE<S> load_domain_aware(const Checkpoint& file, std::string_view prefix = "moe.",
                                    const DomainAwareConfig& config = {}) {
  const std::string loader = "moe::io::load_domain_aware";
  detail::LayerTensors t(file, prefix, loader);
  RowMatrix<S> gate = detail::read_router_weight<S>(t, "gate.weight");
  const Index E = gate.rows();
  const Index d = gate.cols();
  const Index D = t.shape("domain_classifier.weight", 2)[0];
  // Both shapes are checked before either matrix is allocated: [D, E] takes its sizes from two
  // other tensors, so a small file with a [2^20, 1] gate and classifier would otherwise
  // allocate 2^40 affinities before the file's own affinity tensor is looked at.
  t.check("domain_classifier.weight", {D, d});
  t.check("domain_affinity", {D, E});
  RowMatrix<S> classifier(D, d), affinity(D, E);
  t.template read_into<S>("domain_classifier.weight", {D, d}, classifier);
  t.template read_into<S>("domain_affinity", {D, E}, affinity);
  auto experts = detail::read_swiglu_bank<S>(t, "experts.", E, "w1.weight", "w3.weight", "w2.weight");
  return detail::with_loader_name(loader, [&] {
    return DomainAwareMoE<S>(
        std::move(experts),
        DomainAwareSoftmaxTopKRouter<S>(
            SoftmaxTopKRouter<S>(std::move(gate), config.top_k, SoftmaxTopK<S>{config.renormalize}),
            std::move(classifier), std::move(affinity)));
  });
}

/// Task-aware routing (../shared/golden-variety, task_aware): {prefix}gate.weight [E, d] (the
/// base router), {prefix}task_gates.{j}.weight [E, d] for j = 0, 1, ... (N = how many, numbered
/// from 0 without a gap), {prefix}task_sensitivity [N], SwiGLU experts as above.
template <class S>
TaskAwareMoE<S> load_task_aware(const Checkpoint& file, std::string_view prefix = "moe.",
                                const TaskAwareConfig& config = {}) {
  const std::string loader = "moe::io::load_task_aware";
  detail::LayerTensors t(file, prefix, loader);
  RowMatrix<S> gate = detail::read_router_weight<S>(t, "gate.weight");
  const Index E = gate.rows();
  const Index d = gate.cols();
  const auto task_gate = [](Index j) { return "task_gates." + std::to_string(j) + ".weight"; };
  Index N = 0;
  while (file.contains(t.name(task_gate(N)))) ++N;
  if (N == 0)
    t.throw_missing(t.name(task_gate(0)), "expected at least one task router under this name", "the file has none");
  const Index sensitivities = t.shape("task_sensitivity", 1)[0];
  if (sensitivities != N)
    throw TensorMismatchError(file.file_name(t.name("task_sensitivity")), t.name("task_sensitivity"),
                              loader + "(): expected one entry per task router (" + std::to_string(N) +
                                  ": task_gates.0.weight to task_gates." + std::to_string(N - 1) +
                                  ".weight), got " + std::to_string(sensitivities));
  // Every shape is checked before anything is allocated.
  for (Index j = 0; j < N; ++j) t.check(task_gate(j), {E, d});
  std::vector<RowMatrix<S>> task_gates(static_cast<std::size_t>(N), RowMatrix<S>(E, d));
  for (Index j = 0; j < N; ++j)
    t.template read_into<S>(task_gate(j), {E, d}, task_gates[static_cast<std::size_t>(j)]);
  Vector<S> sensitivity(N);
  t.template read_into<S>("task_sensitivity", {N}, sensitivity);
  auto experts = detail::read_swiglu_bank<S>(t, "experts.", E, "w1.weight", "w3.weight", "w2.weight");
  return detail::with_loader_name(loader, [&] {
    return TaskAwareMoE<S>(
        std::move(experts),
        TaskAwareSoftmaxTopKRouter<S>(
            SoftmaxTopKRouter<S>(std::move(gate), config.top_k, SoftmaxTopK<S>{config.renormalize}),
            std::move(task_gates), std::move(sensitivity)));
  });
}

/// Top-p routing (../shared/golden-variety, top_p): {prefix}gate.weight [E, d], SwiGLU experts
/// as above; the threshold and the cap come from config.
template <class S>
TopPMoE<S> load_top_p(const Checkpoint& file, std::string_view prefix = "moe.", const TopPConfig& config = {}) {
  const std::string loader = "moe::io::load_top_p";
  detail::LayerTensors t(file, prefix, loader);
  RowMatrix<S> gate = detail::read_router_weight<S>(t, "gate.weight");
  const Index E = gate.rows();
  auto experts = detail::read_swiglu_bank<S>(t, "experts.", E, "w1.weight", "w3.weight", "w2.weight");
  return detail::with_loader_name(loader, [&] {
    return TopPMoE<S>(std::move(experts),
                      TopPRouter<S>(std::move(gate), config.max_k, TopP<S>{static_cast<S>(config.threshold)}));
  });
}

/// Dynamic expert skipping (../shared/golden-variety, threshold_skip): {prefix}gate.weight
/// [E, d], SwiGLU experts as above; beta and k come from config.
template <class S>
ThresholdSkipMoE<S> load_threshold_skip(const Checkpoint& file, std::string_view prefix = "moe.",
                                        const ThresholdSkipConfig& config = {}) {
  const std::string loader = "moe::io::load_threshold_skip";
  detail::LayerTensors t(file, prefix, loader);
  RowMatrix<S> gate = detail::read_router_weight<S>(t, "gate.weight");
  const Index E = gate.rows();
  auto experts = detail::read_swiglu_bank<S>(t, "experts.", E, "w1.weight", "w3.weight", "w2.weight");
  return detail::with_loader_name(loader, [&] {
    return ThresholdSkipMoE<S>(std::move(experts), ThresholdSkipRouter<S>(std::move(gate), config.top_k,
                                                                          ThresholdSkip<S>{static_cast<S>(config.beta)}));
  });
}

/// Hierarchical routing (../shared/golden-variety, hierarchical): {prefix}gate.weight [a, d]
/// (the primary router; a is its rows), {prefix}group_gates.{i}.weight [b, d] for each of the a
/// groups (b from group 0), SwiGLU experts as above, a * b of them: expert (i, j) is
/// experts.{i * b + j}.
template <class S>
HierarchicalMoE<S> load_hierarchical(const Checkpoint& file, std::string_view prefix = "moe.",
                                     const HierarchicalConfig& config = {}) {
  const std::string loader = "moe::io::load_hierarchical";
  detail::LayerTensors t(file, prefix, loader);
  RowMatrix<S> primary = detail::read_router_weight<S>(t, "gate.weight");
  const Index a = primary.rows();
  const Index d = primary.cols();
  const Index b = t.shape("group_gates.0.weight", 2)[0];
  // Every group's shape first: a and b come from two tensors, so nothing [a * b, d] is
  // allocated before each group router is known to be there.
  for (Index i = 0; i < a; ++i) t.check("group_gates." + std::to_string(i) + ".weight", {b, d});
  RowMatrix<S> groups(a * b, d);
  for (Index i = 0; i < a; ++i)
    t.template read_into<S>("group_gates." + std::to_string(i) + ".weight", {b, d}, groups.middleRows(i * b, b));
  auto experts = detail::read_swiglu_bank<S>(t, "experts.", a * b, "w1.weight", "w3.weight", "w2.weight");
  return detail::with_loader_name(loader, [&] {
    return HierarchicalMoE<S>(std::move(experts),
                              HierarchicalRouter<S>(std::move(primary), std::move(groups), config.top_k_groups,
                                                    config.top_k_per_group, config.renormalize));
  });
}

}  // namespace moe::io

#endif  // MOE_IO_ROUTING_LOADERS_HPP
