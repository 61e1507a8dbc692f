// LossWeights: the shipped losses by name, as the loss list it stands for (its use in
// backward: tests/layer/moe_layer_backward_test.cpp).
#include <moe/loss/loss_weights.hpp>

#include <catch2/catch.hpp>

#include <string>
#include <type_traits>
#include <vector>

namespace {

/// The (loss name, weight) pairs of a loss list, in order.
template <class List>
std::vector<std::pair<std::string, double>> terms_of(const List& list) {
  std::vector<std::pair<std::string, double>> out;
  list.for_each([&](const auto& term) {
    using L = typename std::decay_t<decltype(term)>::loss_type;
    const char* name = std::is_same_v<L, moe::LoadBalancingLoss> ? "aux"
                       : std::is_same_v<L, moe::RouterZLoss>     ? "z"
                       : std::is_same_v<L, moe::ImportanceLoss>  ? "importance"
                       : std::is_same_v<L, moe::SequenceBalanceLoss> ? "sequence"
                       : std::is_same_v<L, moe::LoadLoss>        ? "load"
                                                                 : "?";
    out.emplace_back(name, double(term.weight));
  });
  return out;
}

}  // namespace

TEST_CASE("LossWeights::list is aux, z, importance, sequence, load with their weights, routing_losses leaves out load",
          "[loss][weights]") {
  moe::LossWeights<float> w{.aux = 0.5f, .z = 0.25f, .importance = 0.125f, .load = 2.0f, .sequence = 4.0f};
  using P = std::vector<std::pair<std::string, double>>;
  CHECK(terms_of(w.list()) == P{{"aux", 0.5}, {"z", 0.25}, {"importance", 0.125}, {"sequence", 4.0}, {"load", 2.0}});
  CHECK(terms_of(w.routing_losses()) == P{{"aux", 0.5}, {"z", 0.25}, {"importance", 0.125}, {"sequence", 4.0}});
  CHECK(terms_of(moe::LossWeights<double>{}.list()) ==
        P{{"aux", 0.0}, {"z", 0.0}, {"importance", 0.0}, {"sequence", 0.0}, {"load", 0.0}});
}

TEST_CASE("LossWeights passes its aux and sequence loss settings into the list", "[loss][weights]") {
  moe::LossWeights<double> w;
  w.aux_loss.normalization = moe::LoadBalancingLoss::Normalization::unit;
  w.sequence_loss.alpha = 0.5;
  const auto list = w.list();
  CHECK(std::get<0>(list.terms).loss.normalization == moe::LoadBalancingLoss::Normalization::unit);
  CHECK(std::get<3>(list.terms).loss.alpha == 0.5);
  CHECK(std::get<3>(w.routing_losses().terms).loss.alpha == 0.5);
}
