// Routing tapes on disk (docs/replay.md#files): a tape saved, loaded and replayed gives the
// recorded forward's bits; every kind of damage is a moe::io error naming file and record.
#include <moe/io/routing_tape_io.hpp>
#include <moe/moe.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "support/random.hpp"
#include "support/routing_tape.hpp"
#include "support/safetensors_file.hpp"

namespace {

using moe::Index;
using moe::RoutingRecord;
using moe::RoutingTape;
using moe::RowMatrix;


moe::io::SafetensorsWriter writer_with(const RoutingRecord& r) {
  // Bypass RoutingTape::append's validation: write the record's tensors directly.
  moe::io::SafetensorsWriter w;
  w.metadata("format", "moe-routing-tape").metadata("version", "1").metadata("records", "1");
  const auto n = static_cast<std::int64_t>(r.size());
  const std::vector<std::int64_t> shape{r.layer_index, r.num_tokens, r.num_experts, r.k, r.capacity};
  w.add<std::int64_t>("tape.0.shape", {5}, shape);
  w.add_raw("tape.0.token", moe::io::DType::I32, {n}, moe::io::detail::little_endian_bytes(r.token));
  w.add_raw("tape.0.expert", moe::io::DType::I32, {n}, moe::io::detail::little_endian_bytes(r.expert));
  w.add<double>("tape.0.gate", {static_cast<std::int64_t>(r.gate.size())}, r.gate);
  w.add_raw("tape.0.kept", moe::io::DType::U8, {static_cast<std::int64_t>(r.kept.size())},
            moe::io::detail::little_endian_bytes(r.kept));
  return w;
}

std::string read_error(const moe::io::SafetensorsWriter& w) {
  try {
    (void)moe::io::read_routing_tape(moe::test::in_memory(w, "tape.safetensors"));
  } catch (const moe::io::Error& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST_CASE("routing tape files: save, load and replay give the recorded bits", "[io][replay]") {
  using S = float;
  constexpr Index T = 32, d = 8, E = 6;
  moe::MixtralMoE<S> layer(moe::test::swiglu<S>(E, d, 16, 41),
                           moe::SoftmaxTopKRouter<S>(moe::test::random_matrix(E, d, 42).cast<S>(), 2),
                           {}, moe::Capacity::from_factor(1.0).rerouted(2));
  const RowMatrix<S> x = moe::test::random_matrix(T, d, 43).cast<S>();
  RoutingTape tape;
  moe::ForwardContext ctx;
  ctx.routing_tape = &tape;
  moe::Workspace<S> ws;
  const RowMatrix<S> a = layer.forward(x, ws, ctx);
  ctx.layer_index = 1;
  const RowMatrix<S> b = layer.forward(a, ws, ctx);

  const auto path = std::filesystem::temp_directory_path() / "moe_routing_tape_io_test.safetensors";
  moe::io::save_routing_tape(tape, path);
  RoutingTape loaded = moe::io::load_routing_tape(path);
  std::filesystem::remove(path);
  REQUIRE(loaded.size() == 2);
  CHECK(loaded.mode() == moe::TapeMode::replay);
  for (std::size_t i = 0; i < 2; ++i) {
    const RoutingRecord& want = tape.records()[i];
    const RoutingRecord& got = loaded.records()[i];
    CHECK(got.layer_index == want.layer_index);
    CHECK(got.num_tokens == want.num_tokens);
    CHECK(got.k == want.k);
    CHECK(got.capacity == want.capacity);
    CHECK(got.token == want.token);
    CHECK(got.expert == want.expert);
    CHECK(got.gate == want.gate);
    CHECK(got.kept == want.kept);
  }
  layer.router().weight().setRandom();  // replay does not read the router
  ctx.routing_tape = &loaded;
  ctx.layer_index = 0;
  moe::Workspace<S> replay_ws;
  const RowMatrix<S> a2 = layer.forward(x, replay_ws, ctx);
  ctx.layer_index = 1;
  const RowMatrix<S> b2 = layer.forward(a2, replay_ws, ctx);
  CHECK((a2.array() == a.array()).all());
  CHECK((b2.array() == b.array()).all());
}

TEST_CASE("routing tape files: damage is a moe::io error naming the file and the record", "[io][replay][errors]") {
  CHECK(read_error(writer_with(moe::test::small_routing_record())) == "no error");

  moe::io::SafetensorsWriter no_format;
  CHECK(read_error(no_format) ==
        "moe::io: file 'tape.safetensors': __metadata__.format: expected present (a moe routing tape), got absent");
  moe::io::SafetensorsWriter other_format;
  other_format.metadata("format", "pt");
  CHECK(read_error(other_format) == "moe::io: file 'tape.safetensors': __metadata__.format: expected moe-routing-tape, got pt");
  moe::io::SafetensorsWriter future = writer_with(moe::test::small_routing_record());
  future.metadata("version", "2");
  CHECK(read_error(future) == "moe::io: file 'tape.safetensors': __metadata__.version: expected 1, got 2");
  for (const char* count : {"7", "-1", "x", "1x", "99999999999999999999999"}) {
    moe::io::SafetensorsWriter lying = writer_with(moe::test::small_routing_record());
    lying.metadata("records", count);
    INFO(count);
    CHECK(read_error(lying) == std::string("moe::io: file 'tape.safetensors': __metadata__.records: expected a record "
                                           "count matching the tensors (1 at most), got ") + count);
  }

  const auto damaged = [](auto change) {
    RoutingRecord r = moe::test::small_routing_record();
    change(r);
    return read_error(writer_with(r));
  };
  const std::string prefix = "moe::io: file 'tape.safetensors': routing tape record 0: read_routing_tape(): ";
  CHECK(damaged([](RoutingRecord& r) { r.expert[3] = 4; }) ==
        prefix + "record expert expected in [0, 4), got 4 at assignment 3");
  CHECK(damaged([](RoutingRecord& r) { r.expert[3] = -1; }) ==
        prefix + "record expert expected in [0, 4), got -1 at assignment 3");
  CHECK(damaged([](RoutingRecord& r) { r.expert[1] = 1; }) ==
        prefix + "record expert expected each expert at most once per token, got 1 twice for token 0");
  CHECK(damaged([](RoutingRecord& r) { r.token[2] = 0; r.token[1] = 1; }) ==
        prefix + "record token expected token-major indices in [0, num_tokens), got 1 at assignment 1");
  CHECK(damaged([](RoutingRecord& r) { r.kept[4] = 2; }) == prefix + "record kept flag expected 0 or 1, got 2 at assignment 4");
  CHECK(damaged([](RoutingRecord& r) { r.kept[4] = 1; }) ==
        prefix + "record kept assignments per expert expected <= capacity 2, got 3 for expert 1");
  CHECK(damaged([](RoutingRecord& r) { r.gate.pop_back(); }) ==
        prefix + "record arrays of one length (token, expert, gate, kept) expected 6, got 6, 5, 6");
  CHECK(damaged([](RoutingRecord& r) { r.num_tokens = 4; }) == prefix + "assignments (num_tokens * k) expected 8, got 6");
  CHECK(damaged([](RoutingRecord& r) { r.num_experts = std::int64_t{1} << 40; }) ==
        prefix + "record shape (tokens in [0, 2^31), experts in [1, 2^31), k in [0, experts], capacity >= -1) expected "
                 "valid, got tokens 3, experts 1099511627776, k 2, capacity 2");

  // A tensor of the wrong dtype or missing.
  moe::io::SafetensorsWriter w;
  w.metadata("format", "moe-routing-tape").metadata("version", "1").metadata("records", "1");
  const std::vector<std::int64_t> shape{0, 3, 4, 2, 2};
  w.add<std::int64_t>("tape.0.shape", {5}, shape);
  const std::vector<std::int64_t> tokens{0, 0, 1, 1, 2, 2};
  w.add<std::int64_t>("tape.0.token", {6}, tokens);
  w.add<std::int64_t>("tape.0.expert", {6}, tokens);
  w.add<std::int64_t>("tape.0.gate", {6}, tokens);
  w.add<std::int64_t>("tape.0.kept", {6}, tokens);
  CHECK(read_error(w) ==
        "moe::io: file 'tape.safetensors': tensor 'tape.0.token': expected a vector of I32, got I64 of rank 1");
  moe::io::SafetensorsWriter missing;
  missing.metadata("format", "moe-routing-tape").metadata("version", "1").metadata("records", "1");
  missing.add<std::int64_t>("tape.0.shape", {5}, shape);
  missing.add<std::int64_t>("tape.0.a", {1}, std::vector<std::int64_t>{1});
  missing.add<std::int64_t>("tape.0.b", {1}, std::vector<std::int64_t>{1});
  missing.add<std::int64_t>("tape.0.c", {1}, std::vector<std::int64_t>{1});
  missing.add<std::int64_t>("tape.0.d", {1}, std::vector<std::int64_t>{1});
  CHECK_THROWS_AS(moe::io::read_routing_tape(moe::test::in_memory(missing, "tape.safetensors")),
                  moe::io::MissingTensorError);
}
