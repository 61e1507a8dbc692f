// moe-compare's two tasks: a character-level language model on real text, and the
// mixture-of-clusters regression of examples/train_mixture, where the right routing is known.
#ifndef MOE_EXAMPLES_COMPARE_TASK_HPP
#define MOE_EXAMPLES_COMPARE_TASK_HPP

#include "../train_mixture.hpp"
#include "blocks.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace moe::examples::compare {

enum class TaskKind { text, synthetic };

/// The corpus every Debian machine has: the licence texts of base-files (an essential package).
inline constexpr const char* default_corpus = "/usr/share/common-licenses";

/// One batch: the rows of the model's input and what the loss and the metrics need.
struct Batch {
  Index size = 0;
  std::vector<std::int32_t> window;  ///< text: size x context character ids
  RowMatrix<S> x;                    ///< synthetic: inputs [size, d_in]
  std::vector<std::int32_t> next;    ///< text: the character to predict
  RowMatrix<S> y;                    ///< synthetic: targets [size, d_out]
  std::vector<Index> label;          ///< the class the specialisation is scored against
  std::vector<std::int64_t> token_ids, modality_ids, task_ids, domain_ids;

  /// The ids as a ForwardContext sees them.
  void attach(ForwardContext& ctx) const {
    ctx.token_ids = token_ids;
    ctx.modality_ids = modality_ids;
    ctx.task_ids = task_ids;
    ctx.domain_ids = domain_ids;
  }
};

struct Task {
  TaskKind kind = TaskKind::text;
  std::string description;

  // Text: the corpus as byte ids, the document of each byte, the first held-out position.
  std::vector<std::int32_t> chars;
  std::vector<std::int32_t> doc;
  std::vector<std::string> sources;
  std::string alphabet;  ///< id -> byte
  Index context = 16;
  Index split = 0;

  // Synthetic: sampled once.
  RowMatrix<S> x_train, y_train, x_eval, y_eval;
  std::vector<Index> cluster_train, cluster_eval;
  Index clusters = 0;

  [[nodiscard]] Index vocab() const { return static_cast<Index>(alphabet.size()); }
  /// Inputs the training batches draw from, and the held-out ones.
  [[nodiscard]] Index train_count() const {
    return kind == TaskKind::text ? split - context : x_train.rows();
  }
  [[nodiscard]] Index eval_count() const {
    return kind == TaskKind::text ? static_cast<Index>(chars.size()) - context - split : x_eval.rows();
  }
  /// Number of classes of Batch::label.
  [[nodiscard]] Index classes() const { return kind == TaskKind::text ? vocab() : clusters; }
  [[nodiscard]] Index outputs() const { return kind == TaskKind::text ? vocab() : y_train.cols(); }
  /// Range of the token ids.
  [[nodiscard]] Index id_range() const { return kind == TaskKind::text ? vocab() : clusters; }

  /// Fills b with inputs `rows` of the training (eval = false) or held-out set.
  void fill(Batch& b, std::span<const Index> rows, bool eval) const {
    const auto n = static_cast<Index>(rows.size());
    b.size = n;
    const auto un = static_cast<std::size_t>(n);
    b.label.resize(un);
    b.token_ids.resize(un);
    b.modality_ids.resize(un);
    b.task_ids.resize(un);
    b.domain_ids.resize(un);
    if (kind == TaskKind::text) {
      b.window.resize(un * static_cast<std::size_t>(context));
      b.next.resize(un);
      for (std::size_t i = 0; i < un; ++i) {
        // A window of `context` bytes ending at the current one; the next byte is the target.
        const Index p = rows[i] + (eval ? split : 0);
        for (Index c = 0; c < context; ++c)
          b.window[i * static_cast<std::size_t>(context) + static_cast<std::size_t>(c)] = chars[static_cast<std::size_t>(p + c)];
        const std::int32_t current = chars[static_cast<std::size_t>(p + context - 1)];
        b.next[i] = chars[static_cast<std::size_t>(p + context)];
        b.label[i] = current;
        b.token_ids[i] = current;
        const auto byte = static_cast<unsigned char>(alphabet[static_cast<std::size_t>(current)]);
        b.modality_ids[i] = std::isalpha(byte) ? 0 : std::isspace(byte) ? 1 : 2;
        const std::int32_t d = doc[static_cast<std::size_t>(p + context - 1)];
        b.task_ids[i] = d % num_tasks;
        b.domain_ids[i] = d % num_domains;
      }
    } else {
      const RowMatrix<S>& xs = eval ? x_eval : x_train;
      const RowMatrix<S>& ys = eval ? y_eval : y_train;
      const std::vector<Index>& cl = eval ? cluster_eval : cluster_train;
      b.x.resize(n, xs.cols());
      b.y.resize(n, ys.cols());
      for (std::size_t i = 0; i < un; ++i) {
        b.x.row(static_cast<Index>(i)) = xs.row(rows[i]);
        b.y.row(static_cast<Index>(i)) = ys.row(rows[i]);
        // Synthetic ids all come from the true cluster: id-driven routers are given the truth.
        const Index k = cl[static_cast<std::size_t>(rows[i])];
        b.label[i] = k;
        b.token_ids[i] = k;
        b.modality_ids[i] = k % num_modalities;
        b.task_ids[i] = k % num_tasks;
        b.domain_ids[i] = k % num_domains;
      }
    }
  }
};

/// Reads `path` (a file, or every regular file of a folder, sorted by name, each once however
/// many links name it) as bytes; the last `held_out` fraction is the held-out text.
inline Task load_text(const std::string& path, Index context, double held_out = 0.1) {
  namespace fs = std::filesystem;
  std::vector<fs::path> files;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    std::set<fs::path> seen;
    std::vector<fs::path> all;
    for (const auto& entry : fs::directory_iterator(path, ec))
      if (entry.is_regular_file(ec)) all.push_back(entry.path());
    std::sort(all.begin(), all.end());
    for (const auto& f : all)
      if (seen.insert(fs::canonical(f, ec)).second) files.push_back(f);
  } else if (fs::is_regular_file(path, ec)) {
    files.push_back(path);
  } else {
    throw std::invalid_argument("--text: expected a file or a folder of text files, got '" + path +
                                "', which does not exist (pass --text FILE, or --task synthetic)");
  }
  Task t;
  t.kind = TaskKind::text;
  t.context = context;
  std::string text;
  std::vector<std::int32_t> doc;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    const std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    text += s;
    doc.insert(doc.end(), s.size(), static_cast<std::int32_t>(t.sources.size()));
    t.sources.push_back(f.string());
  }
  std::array<std::int32_t, 256> id{};
  id.fill(-1);
  for (unsigned char c : text) id[c] = 0;
  for (int c = 0; c < 256; ++c)
    if (id[static_cast<std::size_t>(c)] == 0) {
      id[static_cast<std::size_t>(c)] = static_cast<std::int32_t>(t.alphabet.size());
      t.alphabet.push_back(static_cast<char>(c));
    }
  t.chars.reserve(text.size());
  for (unsigned char c : text) t.chars.push_back(id[c]);
  t.doc = std::move(doc);
  const auto n = static_cast<Index>(t.chars.size());
  t.split = static_cast<Index>(double(n) * (1.0 - held_out));
  if (t.split - context < 64 || n - t.split - context < 64)
    throw std::invalid_argument("--text: expected at least " + std::to_string(10 * (64 + context)) +
                                " bytes of text, got " + std::to_string(n) + " in '" + path + "'");
  t.description = "character-level language model on " + path + " (" + std::to_string(files.size()) + " file" +
                  (files.size() == 1 ? "" : "s") + ", " + std::to_string(n) + " bytes, " +
                  std::to_string(t.vocab()) + " distinct; the last " + std::to_string(n - t.split) +
                  " bytes held out), context " + std::to_string(context);
  return t;
}

/// The mixture-of-clusters regression of examples/train_mixture (its make_task, with its map
/// gain and offset): inputs from K clusters, each with its own nonlinear target map
/// tanh(A_k (x - c_k) + b_k).
inline Task make_synthetic(Index clusters, Index d, Index train, Index eval, std::uint64_t seed) {
  mixture::Config cfg;
  cfg.clusters = clusters;
  cfg.d = d;
  cfg.train_tokens = train;
  cfg.eval_tokens = eval;
  cfg.seed = seed;
  auto m = mixture::make_task<S>(cfg);
  Task t;
  t.kind = TaskKind::synthetic;
  t.clusters = clusters;
  t.x_train = std::move(m.x_train);
  t.y_train = std::move(m.y_train);
  t.x_eval = std::move(m.x_eval);
  t.y_eval = std::move(m.y_eval);
  t.cluster_train = std::move(m.cluster_train);
  t.cluster_eval = std::move(m.cluster_eval);
  t.description = "mixture-of-clusters regression: " + std::to_string(clusters) + " clusters, d " + std::to_string(d) +
                  ", " + std::to_string(train) + " training and " + std::to_string(eval) + " held-out inputs";
  return t;
}

}  // namespace moe::examples::compare

#endif  // MOE_EXAMPLES_COMPARE_TASK_HPP
