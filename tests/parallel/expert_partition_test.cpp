// ExpertPartition: contiguous blocks against their definition, owner() as its inverse, errors.
#include <moe/parallel/expert_partition.hpp>

#include <catch2/catch.hpp>

#include <stdexcept>

using moe::Index;
using moe::parallel::ExpertPartition;

TEST_CASE("expert partition: rank r owns the experts from floor(r E / P) up to floor((r + 1) E / P)", "[parallel][partition]") {
  for (Index P = 1; P <= 9; ++P)
    for (Index E = P; E <= 40; ++E) {
      CAPTURE(E, P);
      const ExpertPartition p(E, P);
      Index covered = 0, largest = 0;
      for (Index r = 0; r < P; ++r) {
        CHECK(p.first(r) == (r * E) / P);  // the definition, in integers
        CHECK(p.count(r) >= 1);
        CHECK(p.count(r) >= E / P);
        CHECK(p.count(r) <= E / P + 1);
        largest = std::max(largest, p.count(r));
        for (Index e = p.first(r); e < p.first(r + 1); ++e) {
          CHECK(p.owner(e) == r);
          ++covered;
        }
      }
      CHECK(covered == E);
      CHECK(p.first(P) == E);
      CHECK(p.max_count() == largest);
    }
}

TEST_CASE("expert partition: E = 6 over 4 ranks gives blocks of 1 2 1 2 experts", "[parallel][partition]") {
  const ExpertPartition p(6, 4);
  CHECK(p.count(0) == 1);
  CHECK(p.count(1) == 2);
  CHECK(p.count(2) == 1);
  CHECK(p.count(3) == 2);
  CHECK(p.first(3) == 4);
  CHECK(p.owner(5) == 3);
}

TEST_CASE("expert partition: refuses more ranks than experts and indices outside", "[parallel][partition][errors]") {
  REQUIRE_THROWS_WITH(ExpertPartition(3, 4),
                      "ExpertPartition::ExpertPartition(): num_experts (every rank owns an expert) expected >= "
                      "num_ranks = 4, got 3");
  REQUIRE_THROWS_WITH(ExpertPartition(3, 0), "ExpertPartition::ExpertPartition(): num_ranks expected >= 1, got 0");
  const ExpertPartition p(6, 4);
  REQUIRE_THROWS_WITH(p.owner(6), "ExpertPartition::owner(): expert index expected in [0, 6), got 6");
  REQUIRE_THROWS_WITH(p.first(5), "ExpertPartition::first(): rank expected in [0, 4], got 5");
}
