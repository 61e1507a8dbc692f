// Step 6 (bookkeeping), optional: a running record of what each forward's routing did, per
// call and per layer, for plotting and debugging (docs/telemetry.md).
#ifndef MOE_DISPATCH_TELEMETRY_HPP
#define MOE_DISPATCH_TELEMETRY_HPP

#include <moe/contracts/dispatch_plan.hpp>
#include <moe/contracts/routing_result.hpp>
#include <moe/contracts/statistics.hpp>
#include <moe/core/types.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <mutex>
#include <ostream>
#include <string>
#include <vector>

namespace moe {

/// What one forward call of one layer routed.
struct TelemetryRecord {
  std::uint64_t call = 0;  ///< 0, 1, ... in the order the collector received them
  Index layer = 0;         ///< ForwardContext::layer_index of the call
  Index tokens = 0;        ///< routed units (tokens; sub-tokens under MultiHeadLayer)
  Index assignments = 0;   ///< the router's (token, expert) choices, before capacity
  /// Kept assignments (rows) per expert; for a dense router (Soft MoE), slots per expert.
  std::vector<Index> load;
  double dropped_fraction = 0;  ///< tokens that no expert processed / tokens
  /// Mean over tokens of the entropy (nats) of softmax(logits): how spread the router's
  /// preference is, 0 (certain) to ln E (uniform). NaN when the routing carries no logits
  /// (Soft MoE's calls); a hash router's are all zero, so it reads ln E: no preference.
  double entropy = std::numeric_limits<double>::quiet_NaN();
  /// Mean over tokens of p(1) - p(2), the two largest of softmax(logits): how decided the top
  /// choice is. NaN without logits or with one expert; 0 for a hash router.
  double top1_margin = std::numeric_limits<double>::quiet_NaN();
  /// Per-expert capacity in slots (-1: unbounded), and the largest and mean kept load over it
  /// (NaN when unbounded).
  Index capacity = -1;
  double capacity_use_max = std::numeric_limits<double>::quiet_NaN();
  double capacity_use_mean = std::numeric_limits<double>::quiet_NaN();
};

/// A collector a caller attaches to forward calls through ForwardContext::telemetry:
///
///   moe::RoutingTelemetry telemetry;
///   ctx.telemetry = &telemetry;
///   ctx.layer_index = 3;              // tags the records of this layer
///   layer.forward(x, ws, ctx);        // appends one TelemetryRecord
///   telemetry.write_csv(std::cout);
///
/// When no collector is attached (the default, nullptr) forward does nothing more than test
/// the pointer. record() takes a lock, so one collector may serve layers running on several
/// threads; records keep their arrival order. Attached, each call appends a record (an
/// allocation; the allocation-free steady state holds with telemetry off).
class RoutingTelemetry {
 public:
  /// Appends what one forward routed. `dense` marks a dense router's call (Soft MoE), whose
  /// routing has no (token, expert) choices: load is slots per expert, nothing is dropped.
  template <class S>
  void record(Index layer, const RoutingResult<S>& routing, const DispatchPlan<S>& plan, const LayerStatistics& stats,
              bool dense = false) {
    TelemetryRecord r;
    r.layer = layer;
    r.tokens = dense ? stats.tokens : routing.num_tokens;
    r.assignments = dense ? 0 : routing.size();
    r.load = stats.expert_load;
    if (!dense && r.tokens > 0 && plan.token_offsets.size() == static_cast<std::size_t>(r.tokens) + 1) {
      Index unserved = 0;
      for (Index t = 0; t < r.tokens; ++t)
        unserved += plan.token_offsets[static_cast<std::size_t>(t) + 1] == plan.token_offsets[static_cast<std::size_t>(t)];
      r.dropped_fraction = static_cast<double>(unserved) / static_cast<double>(r.tokens);
    }
    const Index E = routing.logits.cols();
    if (!dense && routing.logits.rows() == routing.num_tokens && routing.num_tokens > 0 && E > 0) {
      double entropy = 0, margin = 0;
      for (Index t = 0; t < routing.num_tokens; ++t) {
        // softmax in double, max-subtracted.
        double m = -std::numeric_limits<double>::infinity();
        for (Index e = 0; e < E; ++e) m = std::max(m, static_cast<double>(routing.logits(t, e)));
        double z = 0;
        for (Index e = 0; e < E; ++e) z += std::exp(static_cast<double>(routing.logits(t, e)) - m);
        double h = 0, p1 = 0, p2 = 0;
        for (Index e = 0; e < E; ++e) {
          const double p = std::exp(static_cast<double>(routing.logits(t, e)) - m) / z;
          if (p > 0) h -= p * std::log(p);
          if (p > p1) {
            p2 = p1;
            p1 = p;
          } else if (p > p2) {
            p2 = p;
          }
        }
        entropy += h;
        margin += p1 - p2;
      }
      r.entropy = entropy / static_cast<double>(routing.num_tokens);
      if (E > 1) r.top1_margin = margin / static_cast<double>(routing.num_tokens);
    }
    r.capacity = dense ? -1 : plan.capacity;
    if (r.capacity > 0 && !r.load.empty()) {
      double max = 0, mean = 0;
      for (Index l : r.load) {
        max = std::max(max, static_cast<double>(l));
        mean += static_cast<double>(l) / static_cast<double>(r.load.size());
      }
      r.capacity_use_max = max / static_cast<double>(r.capacity);
      r.capacity_use_mean = mean / static_cast<double>(r.capacity);
    }
    const std::lock_guard<std::mutex> lock(mutex_);
    r.call = static_cast<std::uint64_t>(records_.size());
    records_.push_back(std::move(r));
  }

  /// The records so far, in arrival order. Not synchronised: read them when no forward that
  /// holds this collector is running.
  [[nodiscard]] const std::vector<TelemetryRecord>& records() const noexcept { return records_; }
  [[nodiscard]] bool empty() const noexcept { return records_.empty(); }
  void clear() {
    const std::lock_guard<std::mutex> lock(mutex_);
    records_.clear();
  }

  /// One line per record: call,layer,tokens,assignments,dropped_fraction,entropy,top1_margin,
  /// capacity,capacity_use_max,capacity_use_mean,load_0,...,load_{E-1} (E the most experts
  /// of any record; a record with fewer leaves the rest empty, as it leaves NaN figures).
  void write_csv(std::ostream& out) const {
    std::size_t experts = 0;
    for (const auto& r : records_) experts = std::max(experts, r.load.size());
    out << "call,layer,tokens,assignments,dropped_fraction,entropy,top1_margin,capacity,capacity_use_max,"
           "capacity_use_mean";
    for (std::size_t e = 0; e < experts; ++e) out << ",load_" << e;
    out << "\n";
    for (const auto& r : records_) {
      out << r.call << ',' << r.layer << ',' << r.tokens << ',' << r.assignments << ',' << number(r.dropped_fraction)
          << ',' << number(r.entropy) << ',' << number(r.top1_margin) << ',' << r.capacity << ','
          << number(r.capacity_use_max) << ',' << number(r.capacity_use_mean);
      for (std::size_t e = 0; e < experts; ++e) {
        out << ',';
        if (e < r.load.size()) out << r.load[e];
      }
      out << "\n";
    }
  }

  /// {"records": [{"call": 0, "layer": 0, ..., "load": [..]}, ...]}; NaN figures are null.
  void write_json(std::ostream& out) const {
    out << "{\"records\": [";
    for (std::size_t i = 0; i < records_.size(); ++i) {
      const auto& r = records_[i];
      out << (i ? ",\n  " : "\n  ") << "{\"call\": " << r.call << ", \"layer\": " << r.layer << ", \"tokens\": " << r.tokens
          << ", \"assignments\": " << r.assignments << ", \"dropped_fraction\": " << json_number(r.dropped_fraction)
          << ", \"entropy\": " << json_number(r.entropy) << ", \"top1_margin\": " << json_number(r.top1_margin)
          << ", \"capacity\": " << r.capacity << ", \"capacity_use_max\": " << json_number(r.capacity_use_max)
          << ", \"capacity_use_mean\": " << json_number(r.capacity_use_mean) << ", \"load\": [";
      for (std::size_t e = 0; e < r.load.size(); ++e) out << (e ? ", " : "") << r.load[e];
      out << "]}";
    }
    out << (records_.empty() ? "]}\n" : "\n]}\n");
  }

 private:
  static std::string number(double v) {
    if (std::isnan(v)) return "";
    return format(v);
  }
  static std::string json_number(double v) { return std::isfinite(v) ? format(v) : std::string("null"); }
  static std::string format(double v) {
    // 17 significant digits: the double back exactly.
    char buf[32];
    const int n = std::snprintf(buf, sizeof buf, "%.17g", v);
    return std::string(buf, static_cast<std::size_t>(std::max(0, n)));
  }

  std::vector<TelemetryRecord> records_;
  std::mutex mutex_;
};

}  // namespace moe

#endif  // MOE_DISPATCH_TELEMETRY_HPP
