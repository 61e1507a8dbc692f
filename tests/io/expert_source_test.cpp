// SwiGLUExpertSource: one expert read from its byte ranges equals that expert of the whole bank.
#include <moe/io/expert_source.hpp>
#include <moe/io/hf_loader.hpp>
#include <moe/io/save_layer.hpp>

#include <catch2/catch.hpp>
#include <support/random.hpp>

#include <filesystem>

namespace fs = std::filesystem;

TEMPLATE_TEST_CASE("an expert loaded on demand equals the in-memory loader's, single file and sharded", "[io][source]",
                   float, double) {
  using S = TestType;
  const fs::path dir = fs::temp_directory_path() / (std::string("moe_source_") + (sizeof(S) == 4 ? "f" : "d"));
  fs::remove_all(dir);
  fs::create_directories(dir / "sharded");
  moe::OlmoeMoE<S> layer(moe::test::swiglu<S>(4, 6, 10, 3),
                         moe::SoftmaxTopKRouter<S>(moe::test::random_matrix(4, 6, 4).template cast<S>(), 2));
  moe::io::SafetensorsWriter w;
  moe::io::save_layer(w, layer, "p.", moe::io::Family::olmoe);
  w.save(dir / "one.safetensors");
  moe::io::save_layer_sharded(dir / "sharded", layer, "p.", moe::io::Family::olmoe);
  const auto memory = moe::io::load_olmoe<S>(moe::io::SafetensorsFile::open(dir / "one.safetensors"), "p.", {.top_k = 2});
  for (const fs::path& where : {dir / "one.safetensors", dir / "sharded"}) {
    const moe::io::SwiGLUExpertSource<S> source(moe::io::LazyCheckpoint::open(where), "p.", 4);
    CHECK(source.d_model() == 6);
    CHECK(source.d_ff() == 10);
    // The weights (d 6, ff 10) and their packed copy: gate|up [20, 6] and down [6, 10] in panels
  // of nr rows, padded (docs/experts.md#packed-weights).
  constexpr Index nr = moe::kernels::PackedTile<S, S, xsimd::default_arch>::nr;
  const auto panels = [](Index n) { return (n + nr - 1) / nr; };
  CHECK(source.expert_bytes() == (3 * 6 * 10 + panels(20) * nr * 6 + panels(6) * nr * 10) * sizeof(S));
    auto r = source.make_resident();
    CHECK(source.load(2, r) == 3 * 6 * 10 * sizeof(S));  // the file stores S
    CHECK(r.gate_up() == memory.experts().gate_up().middleRows(2 * 20, 20));
    CHECK(r.down() == memory.experts().down().middleRows(2 * 6, 6));
    if (where == dir / "sharded") CHECK(source.checkpoint().is_sharded());
  }
}
