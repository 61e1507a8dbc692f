// moe-compare's results over seeds: the summary (mean and standard deviation of every
// figure), the table, and the JSON with every figure and every curve point.
#ifndef MOE_EXAMPLES_COMPARE_REPORT_HPP
#define MOE_EXAMPLES_COMPARE_REPORT_HPP

#include "trainer.hpp"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace moe::examples::compare {

/// Mean and sample standard deviation over seeds (std 0 for one seed); empty when a figure
/// does not apply to the policy.
struct Stat {
  double mean = 0, std = 0;
  Index n = 0;
};

/// The figures of the table, by name, in table order.
inline const std::vector<std::string>& figure_names() {
  static const std::vector<std::string> names = {
      "eval_loss",        "bits_per_char", "train_tokens_per_s", "infer_tokens_per_s", "expert_flops_per_token",
      "experts_per_token", "load_cv_train", "load_cv_end",        "max_mean_end",       "dropped_train",
      "dropped_end",      "stability",     "specialisation",     "aux_loss",           "z_loss"};
  return names;
}

inline std::map<std::string, std::optional<double>> figures(const RunResult& r) {
  return {{"eval_loss", r.eval_loss},
          {"bits_per_char", r.bits_per_char},
          {"train_tokens_per_s", r.train_tokens_per_s},
          {"infer_tokens_per_s", r.infer_tokens_per_s},
          {"expert_flops_per_token", r.expert_flops_per_token},
          {"experts_per_token", r.experts_per_token},
          {"load_cv_train", r.load_cv_train},
          {"load_cv_end", r.load_cv_end},
          {"max_mean_train", r.max_mean_train},
          {"max_mean_end", r.max_mean_end},
          {"dropped_train", r.dropped_train},
          {"dropped_end", r.dropped_end},
          {"stability", r.stability},
          {"specialisation", r.specialisation},
          {"aux_loss", r.aux},
          {"z_loss", r.z}};
}

struct PolicySummary {
  std::string policy, rule;
  bool baseline = false;
  std::map<std::string, std::optional<Stat>> stats;
  std::vector<RunResult> runs;  ///< one per seed
};

struct Comparison {
  std::string task;
  TrainConfig config;
  std::vector<std::uint64_t> seeds;
  Index threads = 1;
  std::vector<PolicySummary> policies;

  [[nodiscard]] const PolicySummary* find(const std::string& name) const {
    for (const auto& p : policies)
      if (p.policy == name) return &p;
    return nullptr;
  }
};

inline void summarise(PolicySummary& s) {
  for (const auto& [name, first] : figures(s.runs.front())) {
    if (!first) {
      s.stats[name] = std::nullopt;
      continue;
    }
    Stat st;
    for (const auto& r : s.runs) {
      const auto v = figures(r).at(name);
      if (!v) continue;
      st.mean += *v;
      ++st.n;
    }
    st.mean /= double(st.n);
    for (const auto& r : s.runs) {
      const auto v = figures(r).at(name);
      if (v) st.std += (*v - st.mean) * (*v - st.mean);
    }
    st.std = st.n > 1 ? std::sqrt(st.std / double(st.n - 1)) : 0.0;
    s.stats[name] = st;
  }
}

/// Where a policy's held-out loss stands against the frozen random router's: "better" or
/// "worse" when the difference of the means exceeds twice its standard error over seeds,
/// else "within noise"; empty with fewer than two seeds.
inline std::string versus(const Stat& a, const Stat& b) {
  if (a.n < 2 || b.n < 2) return "";
  const double se = std::sqrt(a.std * a.std / double(a.n) + b.std * b.std / double(b.n));
  const double diff = a.mean - b.mean;
  if (std::abs(diff) <= 2 * se) return "within noise";
  return diff < 0 ? "better" : "worse";
}

inline std::string format_stat(const std::optional<Stat>& s, const char* fmt, double scale = 1.0, bool with_std = true) {
  if (!s) return "n/a";
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, s->mean * scale);
  std::string out = buf;
  if (with_std && s->n > 1) {
    std::snprintf(buf, sizeof buf, fmt, s->std * scale);
    out += "±" + std::string(buf);
  }
  return out;
}

/// s right-aligned in `width` columns, counting a UTF-8 character (the ±) as one.
inline std::string cell(const std::string& s, int width) {
  int chars = 0;
  for (unsigned char ch : s) chars += (ch & 0xC0) != 0x80;
  return std::string(static_cast<std::size_t>(std::max(0, width - chars)), ' ') + s;
}

/// The tables: one row per policy, figures as mean±std over the seeds. The first says how
/// well and at what cost each policy learned, the second how its routing behaved.
inline std::string format_table(const Comparison& c) {
  std::string out;
  const bool text = !c.policies.empty() && c.policies.front().stats.at("bits_per_char").has_value();
  const bool seeds = c.seeds.size() > 1;
  const int w = seeds ? 14 : 9;
  const PolicySummary* frozen = c.find("frozen-random");
  std::size_t name_width = 19;  // the longest router name, at least "frozen-random" and padding
  for (const auto& p : c.policies) name_width = std::max(name_width, p.policy.size() + 1);
  const auto name = [name_width](const std::string& n) {
    return n + std::string(n.size() < name_width ? name_width - n.size() : 0, ' ');
  };
  out += name("router") + cell(text ? "bits/char" : "loss", w) + (text ? cell("loss", w + 1) : "") + cell("MFLOP/t", 9) +
         cell("exp/tok", 8) + cell("train t/s", 11) + cell("infer t/s", 11) + (seeds ? "  vs frozen-random" : "") + "\n";
  for (const auto& p : c.policies) {
    const auto& s = p.stats;
    std::string verdict;
    if (seeds && frozen != nullptr && &p != frozen) verdict = "  " + versus(*s.at("eval_loss"), *frozen->stats.at("eval_loss"));
    out += name(p.policy) +
           cell(text ? format_stat(s.at("bits_per_char"), "%.3f") : format_stat(s.at("eval_loss"), "%.4f"), w) +
           (text ? cell(format_stat(s.at("eval_loss"), "%.4f"), w + 1) : "") +
           cell(format_stat(s.at("expert_flops_per_token"), "%.3f", 1e-6, false), 9) +
           cell(format_stat(s.at("experts_per_token"), "%.2f", 1.0, false), 8) +
           cell(format_stat(s.at("train_tokens_per_s"), "%.0f", 1.0, false), 11) +
           cell(format_stat(s.at("infer_tokens_per_s"), "%.0f", 1.0, false), 11) + verdict + "\n";
  }
  out += "\n" + name("router") + cell("CV train", w) + cell("CV end", w) + cell("max/mean", 9) + cell("dropped", w) +
         cell("stable", w) + cell("special", w) + cell("aux", w) + cell("z loss", w) + "\n";
  for (const auto& p : c.policies) {
    const auto col = [&](const char* n, const char* fmt) { return cell(format_stat(p.stats.at(n), fmt), w); };
    out += name(p.policy) + col("load_cv_train", "%.3f") + col("load_cv_end", "%.3f") +
           cell(format_stat(p.stats.at("max_mean_end"), "%.2f", 1.0, false), 9) + col("dropped_end", "%.3f") +
           col("stability", "%.3f") + col("specialisation", "%.3f") + col("aux_loss", "%.3f") + col("z_loss", "%.2f") + "\n";
  }
  return out;
}

inline nlohmann::json opt_json(const std::optional<double>& v) {
  return v && std::isfinite(*v) ? nlohmann::json(*v) : nlohmann::json(nullptr);
}

/// Every figure and curve point. `with_timings = false` leaves out the wall-clock figures
/// (the only ones that differ between two runs of the same seeds).
inline nlohmann::json to_json(const Comparison& c, bool with_timings = true) {
  nlohmann::json j;
  const auto& t = c.config;
  j["task"] = c.task;
  j["config"] = {{"steps", t.steps},
                 {"batch", t.batch},
                 {"eval_every", t.eval_every},
                 {"eval_tokens", t.eval_tokens},
                 {"layers", t.model.layers},
                 {"embed", t.model.embed},
                 {"clip", t.model.clip},
                 {"d_model", t.block.d},
                 {"d_ff", t.block.d_ff},
                 {"experts", t.block.experts},
                 {"top_k", t.block.top_k},
                 {"sequence_length", t.block.sequence_length},
                 {"aux", t.block.aux},
                 {"z", t.block.z},
                 {"lr", t.block.lr}};
  j["seeds"] = c.seeds;
  if (with_timings) {
    j["threads"] = c.threads;
    j["arch"] = kernels::arch_name();
  }
  const auto timing = [](const std::string& name) {
    return name == "train_tokens_per_s" || name == "infer_tokens_per_s";
  };
  for (const auto& p : c.policies) {
    nlohmann::json o;
    o["router"] = p.policy;
    o["rule"] = p.rule;
    o["baseline"] = p.baseline;
    for (const auto& [name, st] : p.stats) {
      if (!with_timings && timing(name)) continue;
      o["summary"][name] = st ? nlohmann::json{{"mean", st->mean}, {"std", st->std}} : nlohmann::json(nullptr);
    }
    for (const auto& r : p.runs) {
      nlohmann::json run;
      run["seed"] = r.seed;
      for (const auto& [name, v] : figures(r)) {
        if (!with_timings && timing(name)) continue;
        run[name] = opt_json(v);
      }
      for (const auto& pt : r.curve) {
        run["curve"].push_back({{"step", pt.step},
                                {"eval_loss", pt.eval_loss},
                                {"train_loss", opt_json(pt.train_loss)},
                                {"load_cv", pt.load_cv},
                                {"load_max_mean", pt.load_max_mean},
                                {"dropped", pt.dropped},
                                {"changed", opt_json(pt.changed)},
                                {"entropy", opt_json(pt.entropy)},
                                {"top1_margin", opt_json(pt.top1_margin)},
                                {"load_share", pt.load_share}});
      }
      o["runs"].push_back(run);
    }
    j["results"].push_back(o);
  }
  return j;
}

/// Trains every policy for every seed (seeds first, then policies, so a progress line tells
/// how far the whole comparison is).
inline Comparison run_comparison(const Task& task, const std::vector<Policy>& list, const TrainConfig& cfg,
                                 const std::vector<std::uint64_t>& seeds, ThreadPool* pool,
                                 const std::function<void(std::size_t, std::size_t, const std::string&, std::uint64_t,
                                                          const CurvePoint&)>& progress = {}) {
  Comparison c;
  c.task = task.description;
  c.config = cfg;
  c.seeds = seeds;
  c.threads = pool != nullptr ? static_cast<Index>(pool->size()) : 1;
  for (const auto& p : list) c.policies.push_back({p.name, p.rule, p.baseline, {}, {}});
  const std::size_t total = list.size() * seeds.size();
  std::size_t done = 0;
  for (const auto seed : seeds)
    for (std::size_t i = 0; i < list.size(); ++i) {
      ++done;
      c.policies[i].runs.push_back(train_one(task, list[i], cfg, seed, pool, [&](const std::string& name, std::uint64_t s,
                                                                                 const CurvePoint& pt) {
        if (progress) progress(done, total, name, s, pt);
      }));
    }
  for (auto& p : c.policies) summarise(p);
  return c;
}

}  // namespace moe::examples::compare

#endif  // MOE_EXAMPLES_COMPARE_REPORT_HPP
