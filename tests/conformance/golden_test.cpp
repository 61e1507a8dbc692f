// Conformance with the golden reference layers (../shared/golden/README.md).
//
// Every case in the folder runs in float and in double. Every "expected.*" tensor must be
// produced by the family's runner and match within the README's tolerance (max |a-b| /
// max |b| below 1e-5 in float and 1e-10 in double; gradients 1e-4 in float). A case whose
// family has no runner fails. Gradients are skipped, with a warning, only for a runner that
// reports none (has_gradients = false).
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>

#include "conformance/golden_runner.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;
using moe::io::SafetensorsFile;

bool is_gradient(const std::string& key) { return key.rfind("expected.grad", 0) == 0; }

bool is_loss_gradient(const std::string& key) { return key.rfind("expected.grad_", 0) == 0; }

void check_case(const SafetensorsFile& f, const moe::test::GoldenRun& run, double tol, double grad_tol) {
  bool skipped_gradients = false;
  for (const std::string& name : f.names()) {
    if (name.rfind("expected.", 0) != 0) continue;
    const bool gradient = is_gradient(name) || is_loss_gradient(name);
    if (gradient && !run.has_gradients) {
      skipped_gradients = true;
      continue;
    }
    const std::string key = name.substr(std::string("expected.").size());
    INFO("quantity " << key);
    const auto it = run.values.find(key);
    if (it == run.values.end()) {
      FAIL_CHECK("the runner did not compute " << key);
      continue;
    }
    const RowMatrix<double>& actual = it->second;
    const auto& info = f.info(name);
    const Index numel = info.numel();
    REQUIRE(actual.size() == numel);
    // The runner's [rows, cols] and the file's tensor share row-major order; integer tensors
    // (kept flags) are compared as doubles.
    RowMatrix<double> expected(actual.rows(), actual.cols());
    if (info.dtype == moe::io::DType::I64) {
      const auto v = f.read<std::int64_t>(name);
      for (Index i = 0; i < numel; ++i) expected.data()[i] = static_cast<double>(v[static_cast<std::size_t>(i)]);
    } else {
      const auto v = f.read<double>(name);
      for (Index i = 0; i < numel; ++i) expected.data()[i] = v[static_cast<std::size_t>(i)];
    }
    const double err = moe::test::max_relative_error(actual, expected);
    const double limit = gradient ? grad_tol : tol;
    INFO("max relative error " << err << " (tolerance " << limit << ")");
    CHECK(err < limit);
  }
  if (skipped_gradients) WARN("gradients not checked: this family's backward lands with issue #4");
}

/// With MOE_GOLDEN_DUMP=DIR set, writes every computed quantity of a case to
/// DIR/<case>.<type>.bin (key, rows, cols, raw doubles): two builds' dumps compare byte for
/// byte, which is how a refactoring shows that it left every golden output bit-identical.
void dump_run(const std::string& name, const char* type, const moe::test::GoldenRun& run) {
  const char* dir = std::getenv("MOE_GOLDEN_DUMP");
  if (dir == nullptr || *dir == '\0') return;
  std::ofstream out(std::string(dir) + "/" + name + "." + type + ".bin", std::ios::binary);
  for (const auto& [key, m] : run.values) {
    const std::int64_t rows = m.rows(), cols = m.cols();
    out << key << '\n';
    out.write(reinterpret_cast<const char*>(&rows), sizeof rows);
    out.write(reinterpret_cast<const char*>(&cols), sizeof cols);
    out.write(reinterpret_cast<const char*>(m.data()), static_cast<std::streamsize>(sizeof(double) * m.size()));
  }
  if (!out) FAIL("MOE_GOLDEN_DUMP: cannot write " << dir << "/" << name);
}

}  // namespace

TEMPLATE_TEST_CASE("golden cases match the reference in every computed quantity", "[conformance][golden]", float,
                   double) {
  constexpr bool is_float = std::is_same_v<TestType, float>;
  const double tol = is_float ? 1e-5 : 1e-10;
  const double grad_tol = is_float ? 1e-4 : 1e-10;
  const auto cases = moe::test::golden_cases();
  REQUIRE(!cases.empty());
  for (const auto& path : cases) {
    const SafetensorsFile f = SafetensorsFile::open(path);
    const std::string name = moe::test::meta(f, "case");
    const std::string family = moe::test::meta(f, "family");
    DYNAMIC_SECTION(name << " (" << family << ")") {
      const auto& registry = moe::test::family_registry();
      const auto it = registry.find(family);
      if (it == registry.end()) {
        FAIL("golden case " << name << ": family '" << family << "' has no runner in this build");
      } else {
        const auto run = is_float ? it->second.run_float(f) : it->second.run_double(f);
        dump_run(name, is_float ? "float" : "double", run);
        check_case(f, run, tol, grad_tol);
      }
    }
  }
}
